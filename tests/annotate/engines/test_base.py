"""The scoring skeleton every engine shares, on a model-free engine whose log-probs are known exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from remit.annotate.engines import EngineSettings, open_scorer
from remit.annotate.engines.base import Scorer, as_prompts, with_first_nan


class ArithmeticScorer(Scorer):
    """log p(t_i | prefix) = -(t_i + i) / 100: independent of batching, easy to recompute."""

    def __init__(self, vocab_size: int = 50, max_model_len: int = 16, drop_one: bool = False) -> None:
        self.model_dir = Path("arithmetic")
        self.settings = EngineSettings(max_model_len=max_model_len)
        self.vocab_size = vocab_size
        self.drop_one = drop_one
        self.seen: list[list[int]] = []

    def _score_scorable(self, prompts: list[np.ndarray]) -> list[np.ndarray]:
        self.seen.append([len(p) for p in prompts])
        out = [with_first_nan(-(p[1:] + np.arange(1, len(p))) / 100.0) for p in prompts]
        return out[:-1] if self.drop_one else out

    def describe(self) -> dict[str, Any]:
        return {"name": "arithmetic"}

    def close(self) -> None:
        pass


def expected(prompt: list[int]) -> np.ndarray:
    lp = np.full(len(prompt), np.nan, np.float32)
    for i in range(1, len(prompt)):
        lp[i] = np.float32(-(prompt[i] + i) / 100.0)
    return lp


def test_order_short_prompts_and_dtype():
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 50, n).tolist() for n in (5, 0, 1, 16, 2, 9)]
    scorer = ArithmeticScorer()
    got = scorer.score(prompts)
    assert scorer.seen == [[5, 16, 2, 9]]  # only prompts with something to predict reach the engine
    for p, g in zip(prompts, got):
        assert g.dtype == np.float32 and g.shape == (len(p),)
        assert np.array_equal(g, expected(p), equal_nan=True)
    assert scorer.score([]) == []


def test_bad_prompts_are_refused_before_the_engine_runs():
    scorer = ArithmeticScorer()
    with pytest.raises(ValueError, match="prompt 1: token id 50 is outside the vocabulary of arithmetic"):
        scorer.score([[1, 2], [3, 50]])
    with pytest.raises(ValueError, match="prompt 0 has 17 tokens, more than max_model_len = 16"):
        scorer.score([list(range(17))])
    with pytest.raises(ValueError, match="expected a 1-D array of integer token ids"):
        scorer.score([np.array([0.5, 1.0])])
    assert scorer.seen == []


def test_an_engine_that_loses_a_prompt_is_caught():
    with pytest.raises(RuntimeError, match="answered 1 of 2 prompts"):
        ArithmeticScorer(drop_one=True).score([[1, 2], [3, 4]])


def test_as_prompts_keeps_valid_ids_as_int64():
    (a,) = as_prompts([np.array([3, 1, 4], np.int32)], vocab_size=5, max_len=3, model_dir=Path("m"))
    assert a.dtype == np.int64 and a.tolist() == [3, 1, 4]


def test_an_unknown_engine_or_dtype_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"engine must be one of \('vllm', 'hf'\)"):
        open_scorer("tgi", tmp_path, EngineSettings())
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16', 'float16'\)"):
        EngineSettings(dtype="int8")
