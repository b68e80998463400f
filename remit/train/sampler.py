"""Which sample each rank trains on at each step: a seeded global order, cut into global batches.

The order of an epoch depends only on the seed, the epoch number and the output's shard sizes:
shards are permuted, grouped into windows of `shuffle_shards` consecutive shards, and the rows of a
window are permuted together. A window keeps reads local (a rank holds at most one window of
shards in memory) while mixing rows from several parts of the corpus.

Global batch k is the positions ``[k*G, (k+1)*G)`` of the endless sequence epoch 0, epoch 1, ...
Data-parallel rank r takes the r-th contiguous slice of it and cuts that into micro-batches. So
the global batch, and therefore the trained objective, is the same for every DP size and
micro-batch size; ranks never share a sample within an epoch and together cover every sample; and a
run resumes exactly from its count of consumed samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from remit.train.dataset import RemitDataset, collate


class SampleOrder:
    """The seeded order of sample ids, epoch after epoch."""

    def __init__(self, shard_rows: np.ndarray, seed: int, shuffle_shards: int = 8) -> None:
        if shuffle_shards < 1:
            raise ValueError(f"shuffle_shards must be >= 1; got {shuffle_shards}")
        self.shard_rows = np.asarray(shard_rows, np.int64)
        self.shard_first = np.concatenate([[0], np.cumsum(self.shard_rows)])
        self.num_samples = int(self.shard_first[-1])
        self.seed = int(seed)
        self.shuffle_shards = int(shuffle_shards)
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All sample ids once, in this epoch's order."""
        if self._epoch == epoch and self._order is not None:
            return self._order
        rng = np.random.default_rng([self.seed, epoch])
        shard_perm = rng.permutation(len(self.shard_rows))
        parts = []
        for w, first in enumerate(range(0, len(shard_perm), self.shuffle_shards)):
            window = shard_perm[first : first + self.shuffle_shards]
            ids = np.concatenate([np.arange(self.shard_first[s], self.shard_first[s + 1]) for s in window])
            parts.append(np.random.default_rng([self.seed, epoch, w]).permutation(ids))
        self._epoch, self._order = epoch, np.concatenate(parts)
        return self._order

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Sample ids at global positions [start, stop), crossing epoch boundaries as needed."""
        out = []
        pos = start
        while pos < stop:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(stop - pos, self.num_samples - offset)
            out.append(self.epoch_order(epoch)[offset : offset + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def rank_sample_ids(
    order: SampleOrder, consumed_samples: int, global_batch: int, dp_rank: int, dp_size: int
) -> np.ndarray:
    """The sample ids data-parallel rank `dp_rank` trains on in the global batch that starts after
    `consumed_samples` samples (step k of a run with a fixed batch starts at k * global_batch)."""
    if global_batch % dp_size:
        raise ValueError(f"global batch {global_batch} is not divisible by data-parallel size {dp_size}")
    per_rank = global_batch // dp_size
    start = consumed_samples + dp_rank * per_rank
    return order.ids(start, start + per_rank)


def micro_batches(
    dataset: RemitDataset,
    order: SampleOrder,
    *,
    global_batch: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless micro-batches for one rank, starting after `consumed_samples` samples.

    Each optimizer step yields ``global_batch / (micro_batch * dp_size)`` micro-batches. A resumed run
    passes the consumed-sample count from its checkpoint, so it may even change the global batch.
    """
    per_rank = global_batch // dp_size
    if global_batch % dp_size or per_rank % micro_batch:
        raise ValueError(
            f"global batch {global_batch} must be a multiple of micro batch {micro_batch} * DP size {dp_size}"
        )
    consumed = consumed_samples
    while True:
        ids = rank_sample_ids(order, consumed, global_batch, dp_rank, dp_size)
        for first in range(0, per_rank, micro_batch):
            yield collate([dataset[int(i)] for i in ids[first : first + micro_batch]])
        consumed += global_batch
