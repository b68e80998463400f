"""Fixtures for the inspection tests: small synthetic outputs (no models, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import make_output


@pytest.fixture(scope="session")
def small_output(tmp_path_factory) -> Path:
    """~5k tokens in 8 shards; a small vocabulary so that token ids repeat often enough for top lists."""
    return make_output(tmp_path_factory.mktemp("inspect") / "out", n_docs=70, seq_len=64, vocab=60,
                       rows_per_shard=12, seed=3)


@pytest.fixture(scope="session")
def segment_output(tmp_path_factory) -> Path:
    """Segment-centred weights and another eps, to check the views read eps from the manifest."""
    return make_output(tmp_path_factory.mktemp("inspect") / "seg", n_docs=30, seq_len=32, vocab=40, eps=0.1,
                       center="segment", rows_per_shard=16, seed=5)
