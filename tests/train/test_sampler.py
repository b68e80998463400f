"""Read locality: each data-parallel rank reads only the shards that hold its samples, a few per shuffle
window, while the global batches (and so the trained samples) stay those of one process."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from remit.shards.synthetic import make_output
from remit.train.dataset import RemitDataset
from remit.train.sampler import SampleOrder, micro_batches, rank_sample_ids

SEQ = 16
WINDOW = 8


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """About 30 shards of 5 rows (the last one shorter): several windows of 8 shards."""
    return make_output(
        tmp_path_factory.mktemp("sampler") / "o", n_docs=140, seq_len=SEQ, doc_len=(3, 30), rows_per_shard=5, seed=9
    )


def _shard_of(ds: RemitDataset, ids) -> set[int]:
    return {ds.shard_of(int(i)) for i in ids}


def _run_ranks(output: Path, dp: int, gbs: int, mbs: int, steps: int) -> tuple[list[RemitDataset], list[list]]:
    """Each simulated rank with its own dataset (as in training): the micro-batches it trains on per step."""
    datasets, per_rank = [], []
    for rank in range(dp):
        ds = RemitDataset(output, cache_shards=WINDOW, create_attention_mask=False, check_footers=False)
        order = SampleOrder(ds.shard_rows, seed=4, shuffle_shards=WINDOW)
        it = micro_batches(ds, order, global_batch=gbs, micro_batch=mbs, dp_rank=rank, dp_size=dp)
        steps_seen = []
        for _ in range(steps):
            steps_seen.append([next(it) for _ in range(gbs // (mbs * dp))])
        datasets.append(ds)
        per_rank.append(steps_seen)
    return datasets, per_rank


@pytest.mark.parametrize("dp, gbs", [(2, 4), (2, 8), (4, 8)])
def test_each_rank_reads_only_the_shards_of_its_samples(output, dp, gbs):
    probe = RemitDataset(output, check_footers=False)
    n_shards, epoch = probe.num_shards, len(probe)
    steps = epoch // gbs  # one epoch
    datasets, per_rank = _run_ranks(output, dp, gbs, mbs=gbs // dp, steps=steps)
    windows = math.ceil(n_shards / WINDOW)
    bound = windows * (math.ceil(WINDOW / dp) + 1)
    for rank, (ds, steps_seen) in enumerate(zip(datasets, per_rank)):
        ids = np.concatenate([mb["sample_id"] for step in steps_seen for mb in step])
        # Every read was needed, and no shard was read twice (the window fits the shard cache).
        assert set(ds.shard_reads) == _shard_of(ds, ids), rank
        assert len(ds.shard_reads) == len(set(ds.shard_reads)), (rank, ds.shard_reads)
        # A few shards per window, not all of them (before, every rank read every shard).
        assert len(ds.shard_reads) <= bound < n_shards, (rank, len(ds.shard_reads), bound, n_shards)
    # Together the ranks still read everything once or a little more (shards at slice boundaries).
    total = sum(len(ds.shard_reads) for ds in datasets)
    assert n_shards <= total <= n_shards + windows * (dp - 1) + windows * dp


def test_the_samples_are_unchanged(output):
    """The same global batches as one process; the rows trained are the stored rows."""
    gbs, steps = 8, 6
    _, (one_steps,) = _run_ranks(output, 1, gbs, mbs=4, steps=steps)
    _, per_rank = _run_ranks(output, 2, gbs, mbs=2, steps=steps)
    fresh = RemitDataset(output, create_attention_mask=False)
    order = SampleOrder(fresh.shard_rows, seed=4, shuffle_shards=WINDOW)
    for step in range(steps):
        single = np.concatenate([mb["sample_id"] for mb in one_steps[step]])
        split = [np.concatenate([mb["sample_id"] for mb in per_rank[r][step]]) for r in range(2)]
        assert not set(split[0]) & set(split[1])
        np.testing.assert_array_equal(np.concatenate(split), single)  # same batch, same layout
        # ... which holds exactly the positions [k*G, (k+1)*G) of the seeded epoch order.
        assert sorted(single.tolist()) == sorted(order.ids(step * gbs, (step + 1) * gbs).tolist())
        for r in range(2):
            for mb in per_rank[r][step]:
                for b, sid in enumerate(mb["sample_id"]):
                    ref = fresh[int(sid)]
                    for key in ("tokens", "labels", "loss_mask", "loss_weight", "logp_rl", "segment_ids"):
                        np.testing.assert_array_equal(mb[key][b], ref[key], err_msg=f"{sid} {key}")


def test_a_window_interleaves_its_shards_evenly():
    """Any run of G positions inside a window draws from each shard in proportion to its rows (+-1)."""
    rows = np.array([12, 12, 7, 12, 3, 12, 12, 12])
    order = SampleOrder(rows, seed=1, shuffle_shards=8)
    first = np.concatenate([[0], np.cumsum(rows)])
    ids = order.epoch_order(0)
    shard = np.searchsorted(first, ids, side="right") - 1
    for g in (5, 16, 24):
        for a in range(0, len(ids) - g, g):
            counts = np.bincount(shard[a : a + g], minlength=len(rows))
            expected = rows * g / rows.sum()
            assert np.all(np.abs(counts - expected) < 2), (g, a, counts, expected)


def test_a_batch_across_two_windows_keeps_each_rank_local():
    """A batch that spans a window boundary: each rank's slice still comes from few shards per window."""
    rows = np.array([10] * 16 + [3])
    order = SampleOrder(rows, seed=2, shuffle_shards=4)
    first = np.concatenate([[0], np.cumsum(rows)])
    gbs = 8
    for k in range(len(order.epoch_order(0)) // gbs):
        for r in range(2):
            ids = rank_sample_ids(order, k * gbs, gbs, r, 2)
            shards = set((np.searchsorted(first, ids, side="right") - 1).tolist())
            # one window: at most ceil(4/2)+1 shards; a batch spanning two windows: twice that
            assert len(shards) <= 2 * (2 + 1), (k, r, shards)


def test_only_rank_0_reads_every_footer(output, tmp_path):
    """The other ranks open the output without touching any shard; a broken shard then surfaces when a
    rank reads it (in training, rank 0's preflight has read every footer before that)."""
    import shutil

    from remit.shards import ShardError

    bad = Path(shutil.copytree(output, tmp_path / "bad"))
    shard = bad / "shard-00003.parquet"
    shard.write_bytes(shard.read_bytes()[:-80])
    with pytest.raises(ShardError, match=r"shard-00003\.parquet: cannot be opened as Parquet"):
        RemitDataset(bad)  # rank 0: every footer
    other = RemitDataset(bad, check_footers=False)  # any other rank: no shard read yet
    assert other.shard_reads == []
    with pytest.raises(ShardError, match=r"shard-00003\.parquet"):
        other[int(other.shard_first[3])]
