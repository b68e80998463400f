"""Micro-batches as device tensors, prepared one step ahead on a background thread.

Reading and decoding a shard (pyarrow releases the GIL) and building samples then overlap with the
forward and backward passes. The order of batches is fixed by `remit.train.sampler`, so the thread
changes timing, never content.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from remit.train.dataset import RemitDataset
from remit.train.sampler import SampleOrder, micro_batches


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors on `device`. No attention mask: the model's document attention takes the segment ids."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True)
        for k, v in batch.items()
        if k != "attention_mask"
    }


class BatchLoader:
    """An endless iterator of device micro-batches for one data-parallel rank."""

    def __init__(
        self,
        dataset: RemitDataset,
        order: SampleOrder,
        *,
        global_batch: int,
        micro_batch: int,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int,
        device: torch.device,
        prefetch: int = 2,
        steps: int | None = None,
    ) -> None:
        self._source = micro_batches(
            dataset,
            order,
            global_batch=global_batch,
            micro_batch=micro_batch,
            dp_rank=dp_rank,
            dp_size=dp_size,
            consumed_samples=consumed_samples,
            steps=steps,
        )
        self._device = device
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="remit-batch-loader", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for batch in self._source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(StopIteration())  # a bounded source is spent: asking again ends the iteration
        except BaseException as e:  # handed to the training thread, which raises it
            self._queue.put(e)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return to_device(item, self._device)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
