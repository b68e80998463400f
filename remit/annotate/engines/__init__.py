"""Scoring engines: token-id prompts in, the observed tokens' log-probs out.

- `base`: the `Scorer` interface with the scoring skeleton every engine shares, `EngineSettings`,
  and the vLLM install hint.
- `hf`: a plain transformers forward pass, the reference.
- `vllm`: vLLM's offline engine, the default; the only module of the package that imports vLLM.

`open_scorer` loads a model with the named engine; the heavy imports happen there, not on import.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from remit.annotate.engines.base import INSTALL_HINT, Dtype, EngineName, EngineSettings, Scorer


def open_scorer(engine: EngineName, model_dir: str | Path, settings: EngineSettings) -> Scorer:
    """Load `model_dir` with the named engine."""
    if engine == "vllm":
        from remit.annotate.engines.vllm import VllmScorer

        return VllmScorer(model_dir, settings)
    if engine == "hf":
        from remit.annotate.engines.hf import HfScorer

        return HfScorer(model_dir, settings)
    raise ValueError(f"engine must be one of {get_args(EngineName)}; got {engine!r}")


__all__ = ["INSTALL_HINT", "Dtype", "EngineName", "EngineSettings", "Scorer", "open_scorer"]
