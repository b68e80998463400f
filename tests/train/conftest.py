"""Fixtures shared by the Megatron tests of remit.train."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mcore():
    """A world of one with Megatron's groups; the CPU layer is removed again afterwards."""
    from remit.train import cpu_compat, distributed

    created = distributed.init(1)
    cpu_compat.seed_rng(0)
    yield
    distributed.teardown(created)
    cpu_compat.remove()
