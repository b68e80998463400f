"""Stopping a run cleanly before its last step: a scheduler's signal or a wall-time budget.

- `--exit-signal-handler`: SIGTERM (what Slurm sends before a preemption or at its time limit, e.g. with
  ``#SBATCH --signal=TERM@120``) is remembered; the step in flight finishes, the run saves and exits 0.
- `--exit-duration-in-mins N`: the same after N minutes of this process's training.
- Every rank must stop at the same step (a save is a collective), so the decision is one all-reduce of
  a flag per step, taken after the step: the signal may reach only some ranks, or at different times.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

_signalled: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _signalled.append(signum)


class StopRule:
    """Whether the run should save and stop after the current step, agreed by every rank."""

    def __init__(self, handle_signal: bool, duration_mins: float | None, device: torch.device) -> None:
        self.duration_s = None if duration_mins is None else duration_mins * 60.0
        self.device = device
        self.t0 = time.monotonic()
        self.reason: str | None = None
        self.active = handle_signal or duration_mins is not None
        if handle_signal:
            _signalled.clear()
            signal.signal(signal.SIGTERM, _on_sigterm)

    def _local(self) -> int:
        """0: go on; 1: the duration is spent; 2: a signal arrived."""
        if _signalled:
            return 2
        if self.duration_s is not None and time.monotonic() - self.t0 >= self.duration_s:
            return 1
        return 0

    def should_stop(self) -> bool:
        if not self.active:
            return False
        flag = torch.tensor([self._local()], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        value = int(flag.item())
        if value:
            minutes = (self.duration_s or 0.0) / 60
            self.reason = "SIGTERM received" if value == 2 else f"--exit-duration-in-mins {minutes:g} spent"
        return bool(value)
