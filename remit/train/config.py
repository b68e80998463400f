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
CENTER_MODES: tuple[str, ...] = ("row", "segment")
DECAY_STYLES: tuple[str, ...] = ("cosine", "linear")
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
    """Hugging Face Llama checkpoint to start from. Needed unless resuming from `load` or using `init_config`."""
    init_config: Path | None = None
    """Start from random weights instead: a Hugging Face Llama config.json (or a folder holding one),
    initialised as transformers does, seeded with `seed`. The tokenizer comes from the folder if it holds
    one, else from the folder the output's manifest records; the output's tokenizer hash must match."""
    save: Path = Path("remit-train-out")
    """Folder for checkpoints (iter_NNNNNNN/), metrics.jsonl and the HF config template."""
    load: Path | None = None
    """Checkpoint folder to resume from. None: `save`, if it already holds a checkpoint."""
    save_interval: int | None = None
    """Save every N iterations (and always at the end). None: only at the end."""
    export_hf: Path | None = None
    """After training, also write the final model as a Hugging Face checkpoint here."""

    # --- schedule and optimiser ---
    train_iters: int = 100
    """Optimizer steps to run in total (a resumed run continues up to this number)."""
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
    bf16: bool = False
    """bf16 mixed precision (GPU). On the CPU fp32 is several times faster."""

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
        if self.center is not None and self.center not in CENTER_MODES:
            _fail("center", f"unknown centring {self.center!r}", f"use one of {', '.join(CENTER_MODES)}")
        if self.lr_decay_style not in DECAY_STYLES:
            _fail("lr_decay_style", f"unknown style {self.lr_decay_style!r}", f"use {' or '.join(DECAY_STYLES)}")
        for name in ("train_iters", "micro_batch_size", "tensor_model_parallel_size", "log_interval", "shuffle_shards"):
            if int(getattr(self, name)) < 1:
                _fail(name, f"must be >= 1, got {getattr(self, name)}", "pass a positive integer")
        if self.save_interval is not None and self.save_interval < 1:
            _fail("save_interval", f"must be >= 1, got {self.save_interval}", "or leave it unset to save at the end")
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
        # `load` defaults to `save`; a fresh run needs a model to start from.
        fresh = self.load is None and not (self.save / TRACKER_FILE).exists()
        if self.init_hf is None and self.init_config is None and fresh:
            _fail(
                "init_hf",
                "no model to start from (no --init-hf, no --init-config and no checkpoint in --save)",
                "pass --init-hf DIR with a Hugging Face Llama checkpoint, --init-config CONFIG.json for random "
                "weights, or --load a checkpoint",
            )

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.train_iters

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
