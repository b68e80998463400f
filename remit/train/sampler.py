"""Which sample each rank trains on at each step: a seeded global order, cut into global batches.

The order of an epoch depends only on the seed, the epoch number and the output's shard sizes.
Shards are permuted and grouped into windows of `shuffle_shards` consecutive shards. Within a
window, each shard's rows are permuted and the shards are interleaved evenly: row i of a shard with
n rows is placed at "time" (i + u) / n (u a random offset per shard), and the window's order is by
time. So any run of positions draws from every shard of the window in proportion to its size, and
the window as a whole mixes rows from several parts of the corpus.

Global batch k is the positions ``[k*G, (k+1)*G)`` of the endless sequence epoch 0, epoch 1, ...,
laid out by each sample's place within its window: its rank among the window's sample ids, scaled
to [0, 1). Data-parallel rank r takes the r-th contiguous slice of that layout and cuts it into
micro-batches. So:

- the global batch, and therefore the trained objective, is the same for every DP size and
  micro-batch size; ranks never share a sample within an epoch and together cover every sample;
- a rank's slice holds rows of a few neighbouring shards (in id order) of the window, also when a
  batch spans two windows: with D ranks and W shards per window a rank reads at most about
  ceil(W/D) + 1 shards of a window, instead of all W (each shard read is a whole shard, checksummed);
- a run resumes exactly from its count of consumed samples.
"""

from __future__ import annotations

import itertools
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
        self._key: np.ndarray | None = None

    def _window_order(self, epoch: int, w: int, shards: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, w])
        ids, times = [], []
        for s in shards:
            n = int(self.shard_rows[s])
            ids.append(self.shard_first[s] + rng.permutation(n))
            times.append((np.arange(n) + rng.random()) / max(n, 1))
        ids_all, times_all = np.concatenate(ids), np.concatenate(times)
        return ids_all[np.argsort(times_all, kind="stable")]

    def _build(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, layout key) of every position of `epoch`, cached for the last epoch asked.

        The key of a sample is its rank among its window's sample ids, scaled to [0, 1): the relative
        place of its row within the window's shards taken in id order."""
        if self._epoch != epoch or self._order is None or self._key is None:
            shard_perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.shard_rows))
            parts, keys = [], []
            for w, first in enumerate(range(0, len(shard_perm), self.shuffle_shards)):
                order = self._window_order(epoch, w, shard_perm[first : first + self.shuffle_shards])
                parts.append(order)
                keys.append((np.searchsorted(np.sort(order), order) + 0.5) / len(order))
            self._epoch, self._order, self._key = epoch, np.concatenate(parts), np.concatenate(keys)
        return self._order, self._key

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All sample ids once, in this epoch's order."""
        return self._build(epoch)[0]

    def _slices(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, layout key) at global positions [start, stop)."""
        ids, keys = [], []
        pos = start
        while pos < stop:
            epoch, offset = divmod(pos, self.num_samples)
            take = min(stop - pos, self.num_samples - offset)
            order, key = self._build(epoch)
            ids.append(order[offset : offset + take])
            keys.append(key[offset : offset + take])
            pos += take
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return np.concatenate(ids), np.concatenate(keys)

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Sample ids at global positions [start, stop), crossing epoch boundaries as needed."""
        return self._slices(start, stop)[0]

    def batch(self, start: int, stop: int) -> np.ndarray:
        """The samples at positions [start, stop) in the layout of a global batch: sorted by their key
        (then id), so that each data-parallel rank's contiguous slice touches few shards, also in a
        batch that spans two windows."""
        ids, keys = self._slices(start, stop)
        return ids[np.lexsort((ids, keys))]


def rank_sample_ids(
    order: SampleOrder, consumed_samples: int, global_batch: int, dp_rank: int, dp_size: int
) -> np.ndarray:
    """The sample ids data-parallel rank `dp_rank` trains on in the global batch that starts after
    `consumed_samples` samples (step k of a run with a fixed batch starts at k * global_batch)."""
    if global_batch % dp_size:
        raise ValueError(f"global batch {global_batch} is not divisible by data-parallel size {dp_size}")
    per_rank = global_batch // dp_size
    batch = order.batch(consumed_samples, consumed_samples + global_batch)
    return batch[dp_rank * per_rank : (dp_rank + 1) * per_rank]


def micro_batches(
    dataset: RemitDataset,
    order: SampleOrder,
    *,
    global_batch: int,
    micro_batch: int,
    dp_rank: int,
    dp_size: int,
    consumed_samples: int = 0,
    steps: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches for one rank, starting after `consumed_samples` samples: those of `steps` optimizer
    steps, or endless. A bounded run reads no shard past its last step.

    Each optimizer step yields ``global_batch / (micro_batch * dp_size)`` micro-batches. A resumed run
    passes the consumed-sample count from its checkpoint, so it may even change the global batch.
    """
    per_rank = global_batch // dp_size
    if global_batch % dp_size or per_rank % micro_batch:
        raise ValueError(
            f"global batch {global_batch} must be a multiple of micro batch {micro_batch} * DP size {dp_size}"
        )
    consumed = consumed_samples
    for _ in itertools.count() if steps is None else range(steps):
        ids = rank_sample_ids(order, consumed, global_batch, dp_rank, dp_size)
        for first in range(0, per_rank, micro_batch):
            yield collate([dataset[int(i)] for i in ids[first : first + micro_batch]])
        consumed += global_batch
