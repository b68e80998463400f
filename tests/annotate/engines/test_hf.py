"""The hf engine against a naive forward pass; its batching and chunk sizing."""

from __future__ import annotations

import numpy as np
import pytest

from remit.annotate.engines import EngineSettings, open_scorer
from remit.annotate.engines.hf import HfScorer, logit_chunk_positions, token_batches
from tests.annotate.engines.reference import MAX_LEN, assert_scores_match, make_prompts, naive_logprobs


def test_hf_chunked_gather_matches_naive_reference(model_pair, settings):
    # A tiny batch budget and logit chunk force many batches, padding and chunk edges inside prompts.
    scorer = HfScorer(model_pair[0], EngineSettings(max_model_len=MAX_LEN, max_batch_tokens=600))
    scorer.chunk_positions = 7
    prompts = make_prompts(scorer.vocab_size, seed=3)
    got = scorer.score(prompts)
    assert_scores_match(got, [naive_logprobs(scorer.model, p) for p in prompts], 1e-5)


def test_hf_order_nan_and_determinism(model_pair, settings, hf_scores):
    prompts, first = hf_scores["base"]
    scorer = HfScorer(model_pair[0], settings)
    again = scorer.score(prompts)
    for p, a, b in zip(prompts, first, again):
        assert len(a) == len(p)
        assert np.array_equal(a, b, equal_nan=True)
        if len(p) == 1:
            assert np.isnan(a).all()
    # Output order follows input order, not the length-sorted batch order.
    reversed_scores = scorer.score(prompts[::-1])[::-1]
    assert_scores_match(reversed_scores, first, 1e-5)


def test_hf_rejects_bad_prompts(model_pair, settings, tmp_path):
    scorer = HfScorer(model_pair[0], settings)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        scorer.score([np.array([1, scorer.vocab_size])])
    with pytest.raises(ValueError, match="max_model_len"):
        scorer.score([np.zeros(MAX_LEN + 1, np.int32)])
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        open_scorer("hf", tmp_path, settings)


def test_hf_describe(model_pair, settings):
    d = HfScorer(model_pair[0], settings).describe()
    assert d["name"] == "hf" and d["dtype"] == "float32" and d["version"]
    assert d["settings"]["max_model_len"] == MAX_LEN


# -- batching and sizing -----------------------------------------------------------------------------


def test_token_batches_cover_everything_within_budget():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 700, 200)]
    groups = token_batches(lengths, budget=2048)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(lengths)))
    for g in groups:
        width = max(lengths[i] for i in g)
        assert len(g) == 1 or len(g) * width <= 2048
    assert token_batches([5000, 3], budget=100) == [[0], [1]]


def test_logit_chunks_are_bounded():
    assert logit_chunk_positions(152064, 256 << 20) * 152064 * 8 <= 256 << 20
    assert logit_chunk_positions(10, 1) == 1
