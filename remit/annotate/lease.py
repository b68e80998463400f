"""Worker leases on annotation units: `remit.common.lease` with each unit's lease file in `_work/leases/`.

- A worker takes a unit's lease before it scores the unit; a unit whose lease a live worker holds is left
  to that worker and reported (host, pid, rank, age of its heartbeat).
- Before it writes a shard, a worker checks that it still holds the unit's lease (two workers that judged
  one stale lease at the same moment both take it; the later one wins and the other leaves the unit).
"""

from __future__ import annotations

from remit.annotate.workdir import WorkDir
from remit.common import lease
from remit.common.lease import HEARTBEAT_S, STALE_S, Holder, pid_alive, process_start


class Leases(lease.Leases[int]):
    """The leases of one worker process over the units of `work`."""

    def __init__(self, work: WorkDir, rank: int, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        super().__init__(work.lease_path, rank, heartbeat_s, stale_s, what=lambda unit: f"unit {unit}", holder="worker")
        self.work = work


__all__ = ["HEARTBEAT_S", "STALE_S", "Holder", "Leases", "pid_alive", "process_start"]
