"""The training configuration: one dataclass, validated when it is built.

Each field's docstring gives its unit and default. The CLI (`remit.train.cli`) only fills this object;
everything that can be checked before touching the data or a process group is checked here, with a
`ValueError` that names the field and the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WEIGHT_MODES: tuple[str, ...] = ("none", "static", "online", "shuffled", "rho1")
#: Attention backends (see remit.train.attention): auto picks te where Transformer Engine runs, else sdpa.
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "sdpa", "dense", "te")
CENTER_MODES: tuple[str, ...] = ("row", "segment")
DECAY_STYLES: tuple[str, ...] = ("cosine", "linear")
RECOMPUTE_GRANULARITIES: tuple[str, ...] = ("full", "selective")
RECOMPUTE_METHODS: tuple[str, ...] = ("uniform", "block")
#: The file in a checkpoint folder naming its latest iteration (as Megatron-LM names it).
TRACKER_FILE = "latest_checkpointed_iteration.txt"


def _fail(name: str, problem: str, fix: str) -> None:
    raise ValueError(f"{name}: {problem}; {fix}")


@dataclass
class TrainConfig:
    # --- data ---
    data: Path
    """The annotation output folder (manifest.json + shard-*.parquet)."""
    weights: str = "static"
    """Loss weighting: 'none' (plain next-token loss), 'static' (stored weights, base model as proxy),
    'online' (the paper's rule with the current model's own log-prob), 'shuffled' (the stored weights
    permuted among each row's tokens: a control) or 'rho1' (Rho-1: keep the top `keep_ratio` tokens of
    each micro-batch by log p_RL - log p_theta, mean loss over the kept ones)."""
    eps: float | None = None
    """Clip half-width for 'online' weights, w in [1-eps, 1+eps]. None: the output's manifest value."""
    center: str | None = None
    """Centring group for 'online': 'row' (training sequence) or 'segment' (document part). None: the
    output's manifest value."""
    keep_ratio: float = 0.6
    """'rho1': the fraction of each micro-batch's valid tokens that is kept, in (0, 1]. 1.0 is 'none'."""
    shuffle_shards: int = 8
    """Shards mixed in one shuffle window (also the shard cache size per rank). 1: shuffle within a shard."""
    skip_validate: bool = False
    """Skip the full output validation at start (each shard is still checksum-verified when read)."""

    # --- model and checkpoints ---
    init_hf: Path | None = None
    """Hugging Face checkpoint to start from (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM3). Needed
    unless resuming from `load` or starting from random weights (`init_config`)."""
    init_config: Path | None = None
    """Start from random weights instead: a Hugging Face config.json of a supported architecture (or a
    folder holding one), initialised as transformers initialises that model class, seeded with `seed`.
    The tokenizer comes from the folder if it holds one, else from the folder the output's manifest
    records; the output's tokenizer hash must match."""
    attention: str = "auto"
    """Document-masked attention: 'sdpa' (torch scaled_dot_product_attention per document, memory linear
    in the sequence length), 'te' (Transformer Engine, packed THD sequences), 'dense' (mcore's attention
    with a dense [b, 1, S, S] mask: the reference, S x S scores per head) or 'auto' (te if Transformer
    Engine and a GPU are there, else sdpa)."""
    save: Path = Path("remit-train-out")
    """Folder for checkpoints (iter_NNNNNNN/), metrics.jsonl and the HF config template."""
    load: Path | None = None
    """Checkpoint folder to resume from; it must exist and hold a checkpoint. None: `save`, if it
    already holds a checkpoint."""
    trust_checkpoint: bool = False
    """Load a checkpoint whose pickled metadata does not match the hash remit recorded when it saved it
    (or that carries no such hash). A checkpoint is code: its pickles run when loaded."""
    save_interval: int | None = None
    """Save every N iterations (and always at the end). None: only at the end."""
    export_hf: Path | None = None
    """After training, also write the final model as a Hugging Face checkpoint here."""

    # --- schedule and optimiser ---
    train_iters: int = 100
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    override_schedule: bool = False
    """On resume, continue from the checkpoint's step under this run's schedule flags (lr, min_lr,
    warm-up, decay length and style, weight decay) instead of refusing a schedule that differs from the
    checkpoint's (see `remit.train.schedule`)."""
    micro_batch_size: int = 1
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int | None = None
    """Sequences per optimizer step over all ranks. None: micro_batch_size * data-parallel size."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate reached at the end of the decay (0: anneal to zero)."""
    lr_warmup_iters: int = 0
    """Iterations of linear warm-up from 0 to `lr`."""
    lr_decay_iters: int | None = None
    """Iteration at which the decay reaches `min_lr`. None: train_iters."""
    lr_decay_style: str = "cosine"
    """'cosine' or 'linear' decay after warm-up."""
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip (0: off)."""
    seed: int = 1234
    """Seed for the data order and any randomness in the model."""

    # --- parallelism and precision ---
    tensor_model_parallel_size: int = 1
    """Tensor-parallel size: heads, FFN and vocabulary split over this many ranks."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages: the decoder layers are split evenly over them (must divide the layer count).
    Data-parallel size = world size / (tensor_model_parallel_size * pipeline_model_parallel_size)."""
    sequence_parallel: bool = False
    """With tensor parallelism, also split the norms, dropouts and residuals along the sequence over the
    TP ranks (less activation memory). Needs tensor_model_parallel_size > 1."""
    use_distributed_optimizer: bool = False
    """Shard the fp32 main parameters, gradients and Adam state over the data-parallel ranks."""
    overlap_grad_reduce: bool = False
    """Reduce gradients over the data-parallel ranks bucket by bucket during the backward pass."""
    recompute_granularity: str | None = None
    """Activation recompute: 'selective' (the core attention of every layer) or 'full' (whole
    layers, see recompute_method). None: keep all activations."""
    recompute_method: str | None = None
    """For 'full': 'uniform' (checkpoint every group of recompute_num_layers layers) or 'block' (recompute
    only the first recompute_num_layers layers of each pipeline stage). None: 'uniform' with 'full'."""
    recompute_num_layers: int | None = None
    """For 'full': layers per recompute group ('uniform') or layers recomputed per stage ('block').
    None: 1 with 'full'."""
    bf16: bool = False
    """bf16 training: every parameter in bf16, fp32 main parameters in the optimizer, gradients reduced
    in fp32 (GPU; on the CPU fp32 is several times faster)."""

    # --- logging ---
    log_interval: int = 1
    """Print a progress line every N iterations (metrics.jsonl always gets every step)."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded with the run (not used by the trainer)."""

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.save = Path(self.save)
        for name in ("init_hf", "init_config", "load", "export_hf"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if self.weights not in WEIGHT_MODES:
            _fail("weights", f"unknown mode {self.weights!r}", f"use one of {', '.join(WEIGHT_MODES)}")
        if not 0.0 < self.keep_ratio <= 1.0:
            _fail("keep_ratio", f"{self.keep_ratio} is outside (0, 1]", "pass the kept fraction, e.g. 0.6")
        if self.eps is not None and not 0.0 <= self.eps < 1.0:
            _fail("eps", f"{self.eps} is outside [0, 1)", "weights must stay positive: use e.g. 0.2")
        if self.attention not in ATTENTION_BACKENDS:
            _fail("attention", f"unknown backend {self.attention!r}", f"use one of {', '.join(ATTENTION_BACKENDS)}")
        if self.center is not None and self.center not in CENTER_MODES:
            _fail("center", f"unknown centring {self.center!r}", f"use one of {', '.join(CENTER_MODES)}")
        if self.lr_decay_style not in DECAY_STYLES:
            _fail("lr_decay_style", f"unknown style {self.lr_decay_style!r}", f"use {' or '.join(DECAY_STYLES)}")
        for name in (
            "train_iters",
            "micro_batch_size",
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "log_interval",
            "shuffle_shards",
        ):
            if int(getattr(self, name)) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}", "pass a positive integer")
        if self.sequence_parallel and self.tensor_model_parallel_size < 2:
            _fail(
                "sequence_parallel",
                "splits activations over the tensor-parallel ranks, but tensor_model_parallel_size is 1",
                "add --tensor-model-parallel-size N (N > 1) or drop --sequence-parallel",
            )
        self._check_recompute()
        if self.save_interval is not None and self.save_interval < 1:
            _fail("save_interval", f"must be >= 1, got {self.save_interval}", "or leave it unset to save at the end")
        if self.global_batch_size is not None and self.global_batch_size < 1:
            _fail(
                "global_batch_size",
                f"must be >= 1, got {self.global_batch_size}",
                "pass a positive multiple of micro_batch_size * data-parallel size, or leave it unset",
            )
        if self.global_batch_size is not None and self.global_batch_size % self.micro_batch_size:
            _fail(
                "global_batch_size",
                f"{self.global_batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}",
                "make it micro_batch_size * data-parallel size * accumulation steps",
            )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            _fail(
                "lr",
                f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})",
                "fix the learning-rate flags",
            )
        decay = self.decay_iters
        if self.lr_warmup_iters < 0 or self.lr_warmup_iters >= decay:
            _fail(
                "lr_warmup_iters",
                f"{self.lr_warmup_iters} must lie in [0, decay iterations {decay})",
                "shorten the warm-up or lengthen the run",
            )
        if self.clip_grad < 0:
            _fail("clip_grad", f"{self.clip_grad} < 0", "pass 0 to turn clipping off, or a positive norm")
        if self.init_hf is not None and self.init_config is not None:
            _fail("init_config", "given together with --init-hf", "pass one: a checkpoint or a config for random init")
        if self.load is not None:
            if not self.load.is_dir():
                _fail(
                    "load",
                    f"{self.load} does not exist or is not a folder",
                    "pass the --save folder of the run to resume (or drop --load to start from --init-hf)",
                )
            if not (self.load / TRACKER_FILE).exists():
                _fail(
                    "load",
                    f"{self.load} holds no checkpoint (no {TRACKER_FILE})",
                    "pass the --save folder of a run that saved a checkpoint (or drop --load to start from --init-hf)",
                )
        # `load` defaults to `save`; a fresh run needs a model to start from.
        fresh = self.load is None and not (self.save / TRACKER_FILE).exists()
        if self.init_hf is None and self.init_config is None and fresh:
            _fail(
                "init_hf",
                "no model to start from (no --init-hf, no --init-config and no checkpoint in --save)",
                "pass --init-hf DIR with a Hugging Face checkpoint, --init-config CONFIG.json for random weights, "
                "or --load a checkpoint",
            )

    def _check_recompute(self) -> None:
        g = self.recompute_granularity
        if g is not None and g not in RECOMPUTE_GRANULARITIES:
            _fail("recompute_granularity", f"unknown granularity {g!r}", f"use {' or '.join(RECOMPUTE_GRANULARITIES)}")
        if g != "full":
            for name in ("recompute_method", "recompute_num_layers"):
                if getattr(self, name) is not None:
                    _fail(
                        name,
                        f"only applies to --recompute-granularity full (granularity is {g!r})",
                        "add --recompute-granularity full, or drop the flag",
                    )
            return
        if self.recompute_method is None:
            self.recompute_method = "uniform"
        if self.recompute_method not in RECOMPUTE_METHODS:
            _fail(
                "recompute_method",
                f"unknown method {self.recompute_method!r}",
                f"use {' or '.join(RECOMPUTE_METHODS)}",
            )
        if self.recompute_num_layers is None:
            self.recompute_num_layers = 1
        if self.recompute_num_layers < 1:
            _fail("recompute_num_layers", f"must be >= 1, got {self.recompute_num_layers}", "pass a positive integer")

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one copy of the model: tensor-parallel size x pipeline stages."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.train_iters

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel ranks in a world of `world_size` processes (a ValueError if it does not divide)."""
        if world_size % self.model_parallel_size:
            _fail(
                "tensor_model_parallel_size",
                f"TP {self.tensor_model_parallel_size} x PP {self.pipeline_model_parallel_size} does not divide "
                f"the {world_size} processes",
                "launch a multiple of TP x PP processes",
            )
        return world_size // self.model_parallel_size

    def check_batch(self, dp_size: int, samples: int) -> tuple[int, int]:
        """`batch_layout`, and a global batch no larger than the `samples` of the data."""
        gbs, n_micro = self.batch_layout(dp_size)
        unit = self.micro_batch_size * dp_size
        if gbs > samples:
            _fail(
                "global_batch_size",
                f"{gbs} sequences per step, but the data holds only {samples}",
                f"pass --global-batch-size of at most {samples // unit * unit} (a multiple of micro_batch_size * "
                f"data-parallel size {unit})"
                if samples >= unit
                else f"annotate more data: one step needs at least micro_batch_size * data-parallel size = {unit}",
            )
        return gbs, n_micro

    def batch_layout(self, dp_size: int) -> tuple[int, int]:
        """(global batch size, micro-batches per step per rank) for `dp_size` data-parallel ranks."""
        gbs = self.global_batch_size or self.micro_batch_size * dp_size
        if gbs % (self.micro_batch_size * dp_size):
            _fail(
                "global_batch_size",
                f"{gbs} is not divisible by micro_batch_size * data-parallel size "
                f"({self.micro_batch_size} * {dp_size})",
                "pick a global batch that is a multiple of both",
            )
        return gbs, gbs // (self.micro_batch_size * dp_size)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
