"""Fixtures of the engine tests: the settings both engines use and the hf scores vLLM is compared with."""

from __future__ import annotations

import numpy as np
import pytest

from remit.annotate.engines import EngineSettings
from remit.annotate.engines.hf import HfScorer
from tests.annotate.engines.reference import MAX_LEN, make_prompts


@pytest.fixture(scope="session")
def settings() -> EngineSettings:
    return EngineSettings(dtype="float32", max_model_len=MAX_LEN, kv_cache_gib=0.25)


@pytest.fixture(scope="session")
def hf_scores(model_pair, settings) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """HF scores of both models: {name: (prompts, scores)}."""
    out = {}
    for name, path in zip(("base", "rl"), model_pair):
        scorer = HfScorer(path, settings)
        prompts = make_prompts(scorer.vocab_size)
        out[name] = (prompts, scorer.score(prompts))
        scorer.close()
    return out
