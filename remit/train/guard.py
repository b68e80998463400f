"""The non-finite step guard: a step whose loss or gradient norm is not finite never reaches the weights.

Megatron-Core's optimizers look for inf/NaN only when a loss scaler is in use (fp16). In bf16 and
fp32, `optimizer.step()` clips by a NaN norm (``max_norm / nan < 1`` is false, so nothing is
scaled) and Adam writes NaN into every parameter it updates; the next checkpoint saves them. So the
trainer does not call `optimizer.step()`. Each step it:

- checks the step's summed loss report (already reduced over the data-parallel ranks for logging);
- computes the global gradient norm once, checks it, then clips by it and applies the update
  (`guarded_step`, the same sequence of calls as mcore's own `step`).

A failure is a `NonFiniteStepError` raised on every rank together (the checked values are the same on
all ranks), before the optimizer has touched a weight and before anything is saved. Its one-line
message names the step, the ranks and the sample ids, and the checkpoint to resume from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from remit.train.loss import remit_loss

_MAX_IDS = 16


class NonFiniteStepError(ValueError):
    """A step produced a non-finite loss or gradient norm; the optimizer did not apply it."""


@dataclass
class MicroBatchLoss:
    """What the guard needs to find the samples behind a non-finite loss (kept for one step only)."""

    sample_ids: np.ndarray
    per_token_loss: torch.Tensor
    loss_mask: torch.Tensor
    loss_weight: torch.Tensor
    logp_rl: torch.Tensor
    segment_ids: torch.Tensor


def nonfinite_samples(
    records: list[MicroBatchLoss], mode: str, eps: float, center: str, *, seed: int = 0, keep_ratio: float = 1.0
) -> list[int]:
    """Sample ids whose own loss terms (w*l, l, w) are not finite, found by evaluating the loss row by
    row. Centring groups and shuffled's permutations never cross rows, so a row's terms do not depend on
    the other rows (rho1's selection does, but a non-finite term is one with any selection)."""
    bad: list[int] = []
    for r in records:
        for i, sample_id in enumerate(r.sample_ids.tolist()):
            rows = slice(i, i + 1)
            _, _, report = remit_loss(
                r.per_token_loss[rows],
                r.loss_mask[rows],
                mode,
                loss_weight=r.loss_weight[rows],
                logp_rl=r.logp_rl[rows],
                segment_ids=r.segment_ids[rows],
                eps=eps,
                center=center,
                sample_ids=torch.as_tensor(r.sample_ids[rows]),
                seed=seed,
                keep_ratio=keep_ratio,
            )
            if not bool(torch.isfinite(report).all()):
                bad.append(int(sample_id))
    return bad


def _ids(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS])
    return shown + (f" and {len(ids) - _MAX_IDS} more" if len(ids) > _MAX_IDS else "")


def _gather(info: dict) -> list[dict]:
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, info)
    return out


@dataclass
class StepGuard:
    """Checks one step's loss and gradient norm; built once per run."""

    mode: str
    eps: float
    center: str
    resume_hint: Callable[[], str]
    """The sentence telling the user which checkpoint to resume from (it changes as the run saves)."""
    rank: int
    dp_rank: int
    seed: int = 0
    """The run's seed (the `shuffled` mode's permutations)."""
    keep_ratio: float = 1.0
    """The `rho1` mode's kept fraction."""

    def check_loss(
        self, step: int, stats: torch.Tensor, local_stats: torch.Tensor, seen: list[np.ndarray], records
    ) -> None:
        """Raise on every rank if the step's reduced loss report is not finite. `stats` (on the CPU) must
        be the same on all ranks; `local_stats` (on any device, read only on failure) is this rank's own
        share before the reduction."""
        if bool(torch.isfinite(stats).all()):
            return
        local_ok = bool(torch.isfinite(local_stats.cpu()).all())
        info = {
            "rank": self.rank,
            "dp_rank": self.dp_rank,
            "ok": local_ok,
            "ids": [int(i) for i in np.concatenate(seen)] if seen else [],
            "bad": []
            if local_ok
            else nonfinite_samples(
                records, self.mode, self.eps, self.center, seed=self.seed, keep_ratio=self.keep_ratio
            ),
        }
        parts = []
        for r in _gather(info):
            if r["ok"]:
                continue
            which = r["bad"] or r["ids"]
            what = "samples" if r["bad"] else "its samples (none alone is non-finite)"
            parts.append(f"rank {r['rank']} (data-parallel rank {r['dp_rank']}), {what} {_ids(which)}")
        raise NonFiniteStepError(
            f"step {step}: the loss is not finite on {'; '.join(parts) or 'no single rank'}. The optimizer did "
            f"not apply the step and nothing was saved. {self.resume_hint()}"
        )

    def check_grad_norm(self, step: int, grad_norm: float, loss: float, seen: list[np.ndarray]) -> None:
        """Raise on every rank if the global gradient norm (the same value on all ranks) is not finite."""
        if math.isfinite(grad_norm):
            return
        info = {"rank": self.rank, "dp_rank": self.dp_rank, "ids": [int(i) for i in np.concatenate(seen)]}
        by_dp: dict[int, tuple[int, list[int]]] = {}
        for r in _gather(info):
            by_dp.setdefault(r["dp_rank"], (r["rank"], r["ids"]))
        parts = "; ".join(f"data-parallel rank {d} (rank {rk}): {_ids(ids)}" for d, (rk, ids) in sorted(by_dp.items()))
        raise NonFiniteStepError(
            f"step {step}: the gradient norm is {grad_norm} while the loss ({loss:.6g}) is finite, on all ranks "
            f"(the norm is global); samples of the step: {parts}. The optimizer did not apply the step and "
            f"nothing was saved. {self.resume_hint()}"
        )


def guarded_step(optimizer, check_grad_norm: Callable[[float], None]) -> float:
    """Apply one optimizer step unless `check_grad_norm` raises on the global gradient norm; return the
    norm (before clipping).

    The calls are those of mcore's ``MegatronOptimizer.step`` / ``ChainedOptimizer.step``: prepare the
    main gradients, take the norm, clip by it, step. Only the check is added between norm and clip.
    (What later releases add to that step, remit never turns on: see `remit.train.compat`.)
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    if optimizer.prepare_grads():  # True only with an fp16 loss scaler, which remit does not use
        raise RuntimeError("the optimizer found inf/NaN gradients under a loss scaler; remit trains bf16 or fp32")
    grad_norm = float(optimizer.get_grad_norm())
    check_grad_norm(grad_norm)
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "is_stub_optimizer", False) or opt.config.clip_grad <= 0.0:
            continue
        params = opt.get_parameters()
        if params:
            clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=grad_norm)
    optimizer.step_with_ready_grads()
    return grad_norm
