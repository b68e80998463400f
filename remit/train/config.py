"""The training configuration: one dataclass, validated when it is built.

Each field's docstring gives its unit and default. The CLI (`remit.train.cli`) only fills this object;
everything that can be checked before touching the data or a process group is checked here, with a
`ValueError` that names the field and the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from remit.common.flags import library_only, literal_choices, option

WeightMode = Literal["none", "static", "online", "shuffled", "rho1", "external"]
#: Attention backends (see remit.train.attention): auto means sdpa; te is chosen by name.
AttentionBackend = Literal["auto", "sdpa", "dense", "te"]
CenterMode = Literal["row", "segment"]
DecayStyle = Literal["cosine", "linear"]
RecomputeGranularity = Literal["full", "selective"]
RecomputeMethod = Literal["uniform", "block"]
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
#: The file in a checkpoint folder naming its latest iteration (as Megatron-LM names it).
TRACKER_FILE = "latest_checkpointed_iteration.txt"

_DATA = "data"
_MODEL = "model and checkpoints"
_SCHEDULE = "schedule and optimiser"
_PARALLEL = "parallelism, precision, memory"
_LOGGING = "logging"


def _fail(name: str, problem: str, fix: str) -> None:
    raise ValueError(f"{name}: {problem}; {fix}")


@dataclass
class TrainConfig:
    """remit-train's configuration and the single list of its flags: every field is declared with its flag,
    help text and group (`remit.common.flags.option`); closed choices are `Literal` types."""

    # --- data ---
    data: Path = option(help="annotation output folder (manifest.json + shards)", group=_DATA)
    """The annotation output folder (manifest.json + shard-*.parquet)."""
    weights: WeightMode = option(
        "static",
        help="none: plain next-token loss; static: stored weights; online: the paper's rule with the "
        "current model's log-prob; shuffled: the stored weights permuted within each row (a control); "
        "rho1: Rho-1, the top --keep-ratio tokens of each micro-batch by log p_RL - log p_theta; external: "
        "per-token weights from --external-weights (default: static)",
        group=_DATA,
    )
    """Loss weighting: 'none' (plain next-token loss), 'static' (stored weights, base model as proxy),
    'online' (the paper's rule with the current model's own log-prob), 'shuffled' (the stored weights
    permuted among each row's tokens: a control) or 'rho1' (Rho-1: keep the top `keep_ratio` tokens of
    each micro-batch by log p_RL - log p_theta, mean loss over the kept ones) or 'external' (per-token
    weights from the `external_weights` folder, not from any log-prob: labels, another scorer)."""
    external_weights: Path | None = option(
        None,
        help="external: folder of per-token weights, one Parquet file per shard of --data (sample_id, weight); "
        "see docs/format.md",
        group=_DATA,
    )
    """'external': the folder of per-token weights beside the output (`remit.shards.external`): one
    Parquet file per shard, named like it, with the shard's sample ids and one weight per token."""
    keep_ratio: float = option(
        0.6, help="rho1: fraction of each micro-batch's valid tokens kept, in (0, 1] (default: 0.6)", group=_DATA
    )
    """'rho1': the fraction of each micro-batch's valid tokens that is kept, in (0, 1]. 1.0 is 'none'."""
    eps: float | None = option(
        None, help="online: clip half-width, weights in [1-eps, 1+eps] (default: the manifest's)", group=_DATA
    )
    """Clip half-width for 'online' weights, w in [1-eps, 1+eps]. None: the output's manifest value."""
    center: CenterMode | None = option(
        None, help="online: centre the discrepancy per row or per segment (default: the manifest's)", group=_DATA
    )
    """Centring group for 'online': 'row' (training sequence) or 'segment' (document part). None: the
    output's manifest value."""
    shuffle_shards: int = option(
        8, help="shards mixed in one shuffle window, also shards cached per rank (default: 8)", group=_DATA
    )
    """Shards mixed in one shuffle window (also the shard cache size per rank). 1: shuffle within a shard."""
    skip_validate: bool = option(
        False,
        help="skip the validation of each rank's shards at start (shards are still checksum-verified)",
        group=_DATA,
    )
    """Skip the validation of each rank's own shards at start (each shard is still checksum-verified when
    read)."""

    eval_data: Path | None = option(
        None, help="held-out annotation output: its loss is evaluated during training (default: none)", group=_DATA
    )
    """A held-out annotation output (same tokenizer and sequence length as `data`, checked alike): its loss,
    under the run's own weight mode, is written to metrics.jsonl as eval_loss / eval_loss_unweighted."""
    eval_interval: int | None = option(
        None, help="evaluate every N steps, and at the end (default: only at the end)", group=_DATA
    )
    """Evaluate every N optimizer steps and after the last. None: only after the last step."""
    eval_iters: int | None = option(
        None, help="global batches per evaluation (default: the whole eval output)", group=_DATA
    )
    """Global batches of eval data per evaluation (the first ones, in sample order). None: all of it."""

    # --- model and checkpoints ---
    init_hf: Path | None = option(
        None,
        help="Hugging Face checkpoint to start from: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3 or SmolLM3",
        group=_MODEL,
    )
    """Hugging Face checkpoint to start from (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM3). Needed
    unless resuming from `load` or starting from random weights (`init_config`)."""
    init_config: Path | None = option(
        None,
        help="start from random weights: an HF config.json of a supported architecture (or a folder with one), "
        "seeded by --seed; the tokenizer comes from that folder or from the one the output's manifest records",
        group=_MODEL,
    )
    """Start from random weights instead: a Hugging Face config.json of a supported architecture (or a
    folder holding one), initialised as transformers initialises that model class, seeded with `seed`.
    The tokenizer comes from the folder if it holds one, else from the folder the output's manifest
    records; the output's tokenizer hash must match."""
    attention: AttentionBackend = option(
        "auto",
        help="document-masked attention: sdpa (memory linear in seq-len), te (Transformer Engine, packed), "
        "dense (reference, S x S scores), auto = sdpa (default: auto)",
        group=_MODEL,
    )
    """Document-masked attention: 'sdpa' (torch scaled_dot_product_attention per document, memory linear
    in the sequence length), 'te' (Transformer Engine, packed THD sequences; chosen by name only), 'dense'
    (mcore's attention with a dense [b, 1, S, S] mask: the reference, S x S scores per head) or 'auto'
    (sdpa)."""
    save: Path = option(
        Path("remit-train-out"),
        help="run folder: checkpoints, metrics.jsonl, HF template",
        group=_MODEL,
        required=True,
    )
    """Folder for checkpoints (iter_NNNNNNN/), metrics.jsonl and the HF config template."""
    load: Path | None = option(None, help="checkpoint folder to resume from (default: --save)", group=_MODEL)
    """Checkpoint folder to resume from; it must exist and hold a checkpoint. None: `save`, if it
    already holds a checkpoint."""
    trust_checkpoint: bool = option(
        False,
        help="load a checkpoint whose files do not match the hashes remit recorded, or that has none (for a "
        "checkpoint from elsewhere; its pickles still go through the allow-list)",
        group=_MODEL,
    )
    """Load a checkpoint whose files do not match the hashes remit recorded when it saved them (or that
    carries no such hash file). Its pickles are still read through the allow-list (remit.train.safe_load)."""
    save_interval: int | None = option(
        None, help="save every N iterations; always at the end (default: only at the end)", group=_MODEL
    )
    """Save every N iterations (and always at the end). None: only at the end."""
    export_hf: Path | None = option(None, help="after training, write the model as HF here", group=_MODEL)
    """After training, also write the final model as a Hugging Face checkpoint here."""
    keep_last: int | None = option(
        None, help="keep only the newest N checkpoints once a newer one is complete (default: keep all)", group=_MODEL
    )
    """Checkpoints kept: older ones are removed once a newer one is complete. None: keep every one."""
    async_save: bool = option(
        False,
        help="write checkpoints in the background while training goes on (the tracker moves once every rank is done)",
        group=_MODEL,
    )
    """Hand each save to dist_checkpointing's background writer: training goes on while the files are
    written and hashed; the tracker moves only once every rank has finished, and the run never exits with
    a save pending."""
    exit_signal_handler: bool = option(
        False,
        help="on SIGTERM (Slurm's warning before preemption or its time limit): finish the step, save, exit 0",
        group=_MODEL,
    )
    """On SIGTERM, finish the current step, save a checkpoint and exit 0 (resume with the same command)."""
    exit_duration_in_mins: float | None = option(
        None, help="save and exit 0 after N minutes of training (default: no limit)", group=_MODEL
    )
    """Save and exit cleanly once this many minutes of training have passed (a wall-time budget)."""

    # --- schedule and optimiser ---
    train_iters: int = option(100, help="optimizer steps in total", group=_SCHEDULE, required=True)
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
    override_schedule: bool = option(
        False,
        help="on resume, continue from the checkpoint's step under the new schedule flags instead of refusing them",
        group=_SCHEDULE,
    )
    """On resume, continue from the checkpoint's step under this run's schedule flags (lr, min_lr,
    warm-up, decay length and style, weight decay) instead of refusing a schedule that differs from the
    checkpoint's (see `remit.train.schedule`)."""
    micro_batch_size: int = option(1, help="sequences per forward pass per rank", group=_SCHEDULE)
    """Sequences per forward/backward pass on one data-parallel rank."""
    global_batch_size: int | None = option(
        None, help="sequences per optimizer step over all ranks (default: micro batch x DP size)", group=_SCHEDULE
    )
    """Sequences per optimizer step over all ranks. None: micro_batch_size * data-parallel size."""
    lr: float = option(3e-4, help="peak learning rate (default: 3e-4)", group=_SCHEDULE)
    """Peak learning rate."""
    min_lr: float = option(0.0, help="learning rate at the end of the decay (default: 0)", group=_SCHEDULE)
    """Learning rate reached at the end of the decay (0: anneal to zero)."""
    lr_warmup_iters: int = option(0, help="linear warm-up iterations (default: 0)", group=_SCHEDULE)
    """Iterations of linear warm-up from 0 to `lr`."""
    lr_decay_iters: int | None = option(
        None, help="decay length in iterations (default: --train-iters)", group=_SCHEDULE
    )
    """Iteration at which the decay reaches `min_lr`. None: train_iters."""
    lr_decay_style: DecayStyle = option("cosine", help="decay shape (default: cosine)", group=_SCHEDULE)
    """'cosine' or 'linear' decay after warm-up."""
    weight_decay: float = option(0.1, help="AdamW weight decay (default: 0.1)", group=_SCHEDULE)
    adam_beta1: float = option(0.9, help="Adam beta1 (default: 0.9)", group=_SCHEDULE)
    adam_beta2: float = option(0.95, help="Adam beta2 (default: 0.95)", group=_SCHEDULE)
    adam_eps: float = option(1e-8, help="Adam epsilon (default: 1e-8)", group=_SCHEDULE)
    clip_grad: float = option(1.0, help="gradient-norm clip, 0 = off (default: 1.0)", group=_SCHEDULE)
    """Global gradient-norm clip (0: off)."""
    seed: int = option(
        1234,
        help="seed of the data order, of --init-config's weights and of shuffled's permutations (default: 1234)",
        group=_SCHEDULE,
    )
    """Seed for the data order and any randomness in the model."""

    # --- parallelism and precision ---
    tensor_model_parallel_size: int = option(1, help="TP size (default: 1)", group=_PARALLEL)
    """Tensor-parallel size: heads, FFN and vocabulary split over this many ranks."""
    pipeline_model_parallel_size: int = option(
        1,
        help="pipeline stages; must divide the layer count; DP size = world / (TP x PP) (default: 1)",
        group=_PARALLEL,
    )
    """Pipeline stages: the decoder layers are split evenly over them (must divide the layer count).
    Data-parallel size = world size / (tensor_model_parallel_size * pipeline_model_parallel_size)."""
    sequence_parallel: bool = option(
        False,
        help="with TP > 1: also split norms and residuals along the sequence over the TP ranks",
        group=_PARALLEL,
    )
    """With tensor parallelism, also split the norms, dropouts and residuals along the sequence over the
    TP ranks (less activation memory). Needs tensor_model_parallel_size > 1."""
    use_distributed_optimizer: bool = option(
        False,
        help="shard fp32 main parameters, gradients and Adam state over the data-parallel ranks",
        group=_PARALLEL,
    )
    """Shard the fp32 main parameters, gradients and Adam state over the data-parallel ranks."""
    overlap_grad_reduce: bool = option(
        False,
        help="reduce gradients over data-parallel ranks bucket by bucket during the backward pass",
        group=_PARALLEL,
    )
    """Reduce gradients over the data-parallel ranks bucket by bucket during the backward pass."""
    recompute_granularity: RecomputeGranularity | None = option(
        None,
        help="activation recompute: selective = the core attention of every layer, full = whole layers (default: off)",
        group=_PARALLEL,
    )
    """Activation recompute: 'selective' (the core attention of every layer) or 'full' (whole
    layers, see recompute_method). None: keep all activations."""
    recompute_method: RecomputeMethod | None = option(
        None,
        help="full only: uniform = checkpoint every group of --recompute-num-layers layers, block = only the "
        "first --recompute-num-layers layers of each stage (default: uniform)",
        group=_PARALLEL,
    )
    """For 'full': 'uniform' (checkpoint every group of recompute_num_layers layers) or 'block' (recompute
    only the first recompute_num_layers layers of each pipeline stage). None: 'uniform' with 'full'."""
    recompute_num_layers: int | None = option(
        None, help="full only: layers per group (uniform) or per stage (block) (default: 1)", group=_PARALLEL
    )
    """For 'full': layers per recompute group ('uniform') or layers recomputed per stage ('block').
    None: 1 with 'full'."""
    bf16: bool = option(
        False,
        help="bf16 parameters and compute, fp32 main parameters in the optimizer (GPUs; fp32 is faster on CPUs)",
        group=_PARALLEL,
    )
    """bf16 training: every parameter in bf16, fp32 main parameters in the optimizer, gradients reduced
    in fp32 (GPU; on the CPU fp32 is several times faster)."""

    # --- logging ---
    log_interval: int = option(1, help="progress line every N steps (default: 1)", group=_LOGGING)
    """Print a progress line every N iterations (metrics.jsonl always gets every step)."""
    tensorboard_dir: Path | None = option(
        None, help="also write every metrics.jsonl field as a TensorBoard scalar here", group=_LOGGING
    )
    """Write every numeric field of metrics.jsonl as a TensorBoard scalar of the same name here."""
    wandb_project: str | None = option(
        None, help="also log every metrics.jsonl field to this W&B project (pip install 'remit[wandb]')", group=_LOGGING
    )
    """Log every numeric field of metrics.jsonl to this Weights & Biases project (WANDB_MODE=offline works)."""
    peak_tflops: float | None = option(
        None, help="the device's peak TFLOP/s for MFU (default: from a table of common GPUs)", group=_LOGGING
    )
    """Peak TFLOP/s of one device, for MFU. None: looked up from the device name (GPUs in the table only)."""

    extra: dict[str, Any] = library_only(default_factory=dict)
    """Free-form notes recorded with the run (not used by the trainer)."""

    def _check_external(self) -> None:
        if self.weights == "external" and self.external_weights is None:
            _fail("weights", "external reads its weights from a folder", "pass --external-weights DIR")
        if self.weights != "external" and self.external_weights is not None:
            _fail("external_weights", f"given with --weights {self.weights}", "pass --weights external, or drop it")
        if self.weights == "external" and self.eval_data is not None:
            _fail(
                "eval_data",
                "external weights belong to --data only, so --eval-data has none",
                "drop --eval-data, or evaluate that output in another run",
            )

    def __post_init__(self) -> None:
        self._check_choices()
        self.data = Path(self.data)
        self.save = Path(self.save)
        for name in ("init_hf", "init_config", "load", "export_hf", "eval_data", "tensorboard_dir", "external_weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if not 0.0 < self.keep_ratio <= 1.0:
            _fail("keep_ratio", f"{self.keep_ratio} is outside (0, 1]", "pass the kept fraction, e.g. 0.6")
        if self.eps is not None and not 0.0 <= self.eps < 1.0:
            _fail("eps", f"{self.eps} is outside [0, 1)", "weights must stay positive: use e.g. 0.2")
        self._check_external()
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
        if self.attention == "te" and self.pipeline_model_parallel_size > 1 and self.micro_batch_size > 1:
            _fail(
                "attention",
                "te packs a micro-batch into one row of micro_batch_size x seq_len tokens, but pipeline stages "
                f"pass [seq_len, micro_batch_size, hidden] activations (micro_batch_size {self.micro_batch_size})",
                "pass --micro-batch-size 1 with --attention te and pipeline stages, or use --attention sdpa",
            )
        for name in ("eval_interval", "eval_iters", "keep_last"):
            value = getattr(self, name)
            if value is not None and value < 1:
                _fail(name, f"must be >= 1, got {value}", "pass a positive integer, or leave it unset")
        if self.eval_data is None and (self.eval_interval is not None or self.eval_iters is not None):
            _fail("eval_data", "--eval-interval/--eval-iters given without --eval-data", "add --eval-data OUTPUT")
        for name in ("exit_duration_in_mins", "peak_tflops"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                _fail(name, f"must be > 0, got {value}", "pass a positive number, or leave it unset")
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

    def _check_choices(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            choices, value = literal_choices(hints[f.name]), getattr(self, f.name)
            if choices is not None and value is not None and value not in choices:
                _fail(f.name, f"unknown value {value!r}", f"use one of {', '.join(choices)}")

    def _check_recompute(self) -> None:
        g = self.recompute_granularity
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
