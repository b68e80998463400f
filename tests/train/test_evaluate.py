"""How an evaluation is dealt to the data-parallel ranks (no Megatron needed)."""

from __future__ import annotations

import numpy as np
import pytest

from remit.train.evaluate import plan_eval


@pytest.mark.parametrize(
    "total, gbs, mbs, dp, iters", [(10, 4, 2, 2, None), (7, 4, 1, 4, None), (48, 8, 2, 2, 3), (5, 4, 2, 2, 9)]
)
def test_every_covered_sample_once_and_equal_micro_batches(total, gbs, mbs, dp, iters):
    plans = [
        plan_eval(total, global_batch=gbs, micro_batch=mbs, dp_rank=r, dp_size=dp, eval_iters=iters) for r in range(dp)
    ]
    covered = total if iters is None else min(total, iters * gbs)
    ids = np.concatenate([p.sample_ids.reshape(-1) for p in plans])
    assert sorted(ids[ids >= 0].tolist()) == list(range(covered))  # each covered sample once, none beyond
    assert len({p.num_microbatches for p in plans}) == 1  # the ranks run the same number of micro-batches
    assert all(p.sample_ids.shape[1] == mbs for p in plans)
    assert sum(p.samples for p in plans) == covered
    assert (ids < 0).sum() < mbs * dp  # fillers only to complete the last round
