"""The scoring interface: token-id prompts in, the observed tokens' log-probs out.

Two engines implement it: `vllm` (the default, `remit.annotate.engine_vllm`, the only module that
imports vLLM) and `hf` (the transformers reference, `remit.annotate.engine_hf`). Both are fed token
ids and return, for each prompt p, a float32 array a with ``a[0] = NaN`` (no context) and
``a[i] = log p(p[i] | p[:i])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

ENGINES = ("vllm", "hf")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EngineSettings:
    """Settings shared by both models of a run (identical settings are what make the difference of two
    log-probs meaningful). Recorded in the manifest."""

    dtype: str = "float32"
    """Compute dtype. float32 by default: bf16 log-probs are off by ~0.02-0.2 nats/token, more than the
    0.4-nat range in which the weight is not saturated."""
    max_model_len: int = 4097
    """Longest prompt in tokens (seq_len + 1)."""
    max_batch_tokens: int = 0
    """Tokens scored per engine step (vLLM's max_num_batched_tokens; the HF engine's batch budget).
    It bounds the [tokens x vocab] fp32 log-softmax both engines build. 0 = sized from the vocabulary."""
    kv_cache_gib: float = 1.0
    """vLLM KV cache size on CPU (ignored on GPU, where gpu_memory_utilization applies)."""
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {self.dtype!r}")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2; got {self.max_model_len}")
        if self.max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens must be >= 0 (0 = automatic); got {self.max_batch_tokens}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1; got {self.tensor_parallel_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class Scorer(Protocol):
    """One loaded model."""

    def score(self, prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Log-probs of each prompt's own tokens (see module docstring); output order = input order."""
        ...

    def describe(self) -> dict:
        """Engine name, version, dtype and effective settings, for the manifest (deterministic: no times)."""
        ...

    def close(self) -> None:
        """Free the model (and its KV cache) so the next model can be loaded in the same process."""
        ...


def check_model_dir(model_dir: str | Path) -> Path:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: not a model folder (no config.json). Pass the folder written by save_pretrained, "
            "holding config.json and the weight files."
        )
    return path


def as_prompts(prompts: Sequence[Any], vocab_size: int, max_len: int, model_dir: Path) -> list[np.ndarray]:
    """Validate prompts as 1-D integer token-id arrays inside the vocabulary and the length limit."""
    out = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"prompt {i}: expected a 1-D array of integer token ids, got shape {a.shape} {a.dtype}")
        a = a.astype(np.int64, copy=False)
        if a.size and (a.min() < 0 or a.max() >= vocab_size):
            bad = int(a[(a < 0) | (a >= vocab_size)][0])
            raise ValueError(
                f"prompt {i}: token id {bad} is outside the "
                f"vocabulary of {model_dir} (size {vocab_size}); the corpus was tokenized with another tokenizer."
            )
        if a.size > max_len:
            raise ValueError(
                f"prompt {i} has {a.size} tokens, more than max_model_len = {max_len}; raise max_model_len "
                "(seq_len + 1) or cut the prompt."
            )
        out.append(a)
    return out


def open_scorer(engine: str, model_dir: str | Path, settings: EngineSettings) -> Scorer:
    """Load `model_dir` with the named engine. Heavy imports happen here, not at module import."""
    if engine == "vllm":
        from remit.annotate.engine_vllm import VllmScorer

        return VllmScorer(model_dir, settings)
    if engine == "hf":
        from remit.annotate.engine_hf import HfScorer

        return HfScorer(model_dir, settings)
    raise ValueError(f"engine must be one of {ENGINES}; got {engine!r}")
