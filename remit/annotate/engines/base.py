"""The scoring interface: token-id prompts in, the observed tokens' log-probs out.

- `Scorer`: one loaded model. `score` is shared by every engine: it validates the prompts, answers
  prompts too short to score, and hands the rest to the engine's `_score_scorable`.
- `EngineSettings`: what both models of a run are loaded with (identical settings make the difference
  of two log-probs meaningful).
- For each prompt p the result is a float32 array a with ``a[0] = NaN`` (no context) and
  ``a[i] = log p(p[i] | p[:i])``.
- `INSTALL_HINT`: the one message that says how to install vLLM.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from remit.common.requires import install_hint

EngineName = Literal["vllm", "hf"]
Dtype = Literal["float32", "bfloat16", "float16"]

INSTALL_HINT = f"The vllm engine needs vLLM: {install_hint('vllm')}. Or score with `--engine hf`."


@dataclass(frozen=True)
class EngineSettings:
    """Settings shared by both models of a run. Recorded in the manifest."""

    dtype: Dtype = "float32"
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
    """Share of GPU memory vLLM may take (ignored on CPU)."""
    tensor_parallel_size: int = 1
    """GPUs per model replica (vLLM)."""
    seed: int = 0
    """Engine seed; scoring draws nothing at random, it is recorded for completeness."""

    def __post_init__(self) -> None:
        if self.dtype not in get_args(Dtype):
            raise ValueError(f"dtype must be one of {get_args(Dtype)}; got {self.dtype!r}")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2; got {self.max_model_len}")
        if self.max_batch_tokens < 0:
            raise ValueError(f"max_batch_tokens must be >= 0 (0 = automatic); got {self.max_batch_tokens}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1; got {self.tensor_parallel_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def with_first_nan(values: np.ndarray) -> np.ndarray:
    """A prompt's log-probs from the values of its positions 1..n-1: NaN first (no context), float32."""
    lp = np.empty(len(values) + 1, np.float32)
    lp[0] = np.nan
    lp[1:] = values
    return lp


class Scorer(abc.ABC):
    """One loaded model. Engines set `model_dir`, `settings` and `vocab_size`, and implement
    `_score_scorable`, `describe` and `close`."""

    model_dir: Path
    settings: EngineSettings
    vocab_size: int

    def score(self, prompts: Sequence[Any]) -> list[np.ndarray]:
        """Log-probs of each prompt's own tokens (see the module docstring); output order = input order."""
        arrays = as_prompts(prompts, self.vocab_size, self.settings.max_model_len, self.model_dir)
        out: list[np.ndarray] = [np.full(a.size, np.nan, np.float32) for a in arrays]
        # A prompt of fewer than two tokens has nothing to predict (and vLLM rejects empty prompts).
        todo = [i for i, a in enumerate(arrays) if a.size >= 2]
        scored = self._score_scorable([arrays[i] for i in todo])
        if len(scored) != len(todo):
            raise RuntimeError(f"{self.model_dir}: the engine answered {len(scored)} of {len(todo)} prompts")
        for i, lp in zip(todo, scored):
            out[i] = lp
        return out

    @abc.abstractmethod
    def _score_scorable(self, prompts: list[np.ndarray]) -> list[np.ndarray]:
        """Log-probs of prompts of at least two valid tokens, in the order given."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Engine name, version, dtype and effective settings, for the manifest (deterministic: no times)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the model (and its KV cache) so the next model can be loaded in the same process."""
