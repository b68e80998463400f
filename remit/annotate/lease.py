"""Worker leases: one live worker per unit, and a report when a second one shows up.

- Before a worker scores a unit it takes the unit's lease, ``_work/leases/unit-N.json``: its host, boot,
  pid, the process's start time, its rank and a heartbeat, refreshed every `heartbeat_s` by a thread.
- The rule for a lease found in place:
  * written on this host (same host name and boot): its worker is alive when a process with that pid
    exists and started at the recorded time (a reused pid does not count); the heartbeat is not needed;
  * written on another host: its worker is alive while its heartbeat is younger than `stale_s` (the
    hosts' clocks must agree to well within that, as NTP keeps them);
  * a lease whose worker is not alive was left by a worker that died: it is taken over.
- A unit whose lease a live worker holds is left to that worker and reported (host, pid, rank, age of
  its heartbeat). Before it writes a shard, a worker checks that it still holds the unit's lease (two
  workers that judged one stale lease at the same moment both take it; the later one wins and the other
  leaves the unit).
- Leases are removed when their unit is finished or when the worker ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from remit.annotate.workdir import WorkDir
from remit.common.atomic import temporary_path, write_json_atomic

HEARTBEAT_S = 15.0
STALE_S = 120.0


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None when there is no such process
    or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lease."""

    host: str
    boot: str | None
    pid: int
    started: str | None
    rank: int
    token: str
    heartbeat: float

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        return f"pid {self.pid} on {self.host} (rank {self.rank}, heartbeat {age:.0f} s ago)"

    @classmethod
    def from_dict(cls, data: Any) -> Holder | None:
        try:
            return cls(
                host=str(data["host"]),
                boot=data.get("boot"),
                pid=int(data["pid"]),
                started=data.get("started"),
                rank=int(data["rank"]),
                token=str(data["token"]),
                heartbeat=float(data["heartbeat"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class Leases:
    """The leases of one worker process; a context manager that runs the heartbeat and releases on exit."""

    def __init__(self, work: WorkDir, rank: int, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> None:
        self.work, self.rank = work, rank
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.host, self.boot = socket.gethostname(), _boot_id()
        self.token = uuid.uuid4().hex
        self.held: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the rule ------------------------------------------------------------------------------------

    def me(self) -> Holder:
        pid = os.getpid()
        return Holder(self.host, self.boot, pid, process_start(pid), self.rank, self.token, time.time())

    def alive(self, h: Holder) -> bool:
        """Whether the worker that wrote `h` is alive (see the module docstring)."""
        if h.host == self.host and h.boot == self.boot and h.boot is not None:
            if not pid_alive(h.pid):
                return False
            return h.started is None or process_start(h.pid) in (None, h.started)
        return time.time() - h.heartbeat < self.stale_s

    def read(self, unit: int) -> Holder | None:
        try:
            return Holder.from_dict(json.loads(self.work.lease_path(unit).read_text()))
        except (OSError, ValueError):
            return None

    # -- taking and giving back ----------------------------------------------------------------------

    def _write_new(self, path: Path) -> bool:
        """Create the lease file only if there is none (link of a complete file: never seen half-written)."""
        tmp = temporary_path(path)
        tmp.write_text(json.dumps(asdict(self.me())))
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive creation instead
            try:
                with open(path, "x") as f:
                    f.write(tmp.read_text())
                return True
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self, unit: int) -> Holder | None:
        """Take the unit's lease. Returns None when this worker holds it now, else the live worker that does."""
        path = self.work.lease_path(unit)
        path.parent.mkdir(parents=True, exist_ok=True)
        other: Holder | None = None
        for _ in range(3):
            if self._write_new(path):
                break
            other = self.read(unit)
            if other is not None and other.token == self.token:
                break
            if other is None:
                # Unreadable: judge by the file's age alone (a lease is rewritten every heartbeat).
                try:
                    young = time.time() - path.stat().st_mtime < self.stale_s
                except FileNotFoundError:
                    continue
                if young:
                    return Holder("unknown host", None, -1, None, -1, "", path.stat().st_mtime)
            elif self.alive(other):
                return other
            print(
                f"unit {unit}: taking over the lease of a worker that is gone"
                + (f" ({other.describe()})" if other is not None else ""),
                file=sys.stderr,
                flush=True,
            )
            write_json_atomic(path, asdict(self.me()))
        if not self.holds(unit):
            return self.read(unit) or other
        with self._lock:
            self.held.add(unit)
        return None

    def holds(self, unit: int) -> bool:
        h = self.read(unit)
        return h is not None and h.token == self.token

    def release(self, unit: int) -> None:
        with self._lock:
            self.held.discard(unit)
        if self.holds(unit):
            self.work.lease_path(unit).unlink(missing_ok=True)

    # -- the heartbeat -------------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                units = sorted(self.held)
            for unit in units:
                try:
                    if self.holds(unit):
                        write_json_atomic(self.work.lease_path(unit), asdict(self.me()))
                except OSError:
                    pass  # the next beat tries again; a lease is stale only after stale_s

    def __enter__(self) -> Leases:
        self._thread = threading.Thread(target=self._beat, name="remit-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for unit in sorted(self.held):
            self.release(unit)


__all__ = ["HEARTBEAT_S", "STALE_S", "Holder", "Leases", "pid_alive", "process_start"]
