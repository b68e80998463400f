"""Held-out loss during training (`--eval-data`, `--eval-interval`, `--eval-iters`).

- An evaluation covers the first `eval_iters` global batches of the eval output in sample order, or the
  whole output without `eval_iters`. Each data-parallel rank takes its own micro-batches; the last ones
  are filled up with masked rows (no valid token), so every rank runs the same number of micro-batches.
- The loss uses the run's own weight mode (stored weights for static, the current model's for online,
  the selection for rho1, 1 for none), through the same loss function as training.
- The reduction is the training one: the loss reports are sums (Σ w·ℓ, Σ ℓ, valid tokens, ...) added over
  micro-batches, data-parallel ranks and iterations before one division; never a mean of means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from remit.train.dataset import RemitDataset, collate
from remit.train.loader import to_device


@dataclass(frozen=True)
class EvalPlan:
    """Which eval samples each evaluation covers, and this rank's micro-batches of them."""

    sample_ids: np.ndarray
    """[n_micro, micro_batch] this rank's sample ids per micro-batch; -1 marks a filler row."""

    @property
    def num_microbatches(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def samples(self) -> int:
        return int((self.sample_ids >= 0).sum())


def plan_eval(
    total: int, *, global_batch: int, micro_batch: int, dp_rank: int, dp_size: int, eval_iters: int | None
) -> EvalPlan:
    """Split the covered samples (the first `eval_iters` global batches, or all `total`) into micro-batches
    of `micro_batch` rows per rank, dealt to the data-parallel ranks in turn."""
    covered = total if eval_iters is None else min(total, eval_iters * global_batch)
    chunk = micro_batch * dp_size
    padded = -(-covered // chunk) * chunk
    ids = np.full(padded, -1, np.int64)
    ids[:covered] = np.arange(covered)
    return EvalPlan(ids.reshape(-1, dp_size, micro_batch)[:, dp_rank, :])


def eval_batches(dataset: RemitDataset, plan: EvalPlan, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches; a filler row repeats sample 0 with an all-zero loss mask."""
    out = []
    for row_ids in plan.sample_ids:
        samples = []
        for sample_id in row_ids:
            sample = dict(dataset[max(int(sample_id), 0)])
            if sample_id < 0:
                sample["loss_mask"] = np.zeros_like(sample["loss_mask"])
            samples.append(sample)
        out.append(to_device(collate(samples), device))
    return out


def eval_record(summary: dict[str, float]) -> dict[str, float | int]:
    """metrics.jsonl's eval fields from a summed report's summary."""
    return {
        "eval_loss": summary["loss"],
        "eval_loss_unweighted": summary["loss_unweighted"],
        "eval_tokens": int(summary["valid_tokens"]),
    }
