"""Leases: one live process per key (an annotation unit, a training run folder), and a report when a second
one shows up.

- Before a process works on a key it takes the key's lease, a small JSON file: its host, boot, pid, the
  process's start time, its rank, the scheduler's job id and a heartbeat, refreshed every `heartbeat_s`
  by a thread. The file is created with a hard link of a complete file (or exclusive creation where the
  file system has no hard links), which holds on NFS and Lustre.
- The rule for a lease found in place:
  * written on this host (same host name and boot): its process is alive when a process with that pid
    exists and started at the recorded time (a reused pid does not count); the heartbeat is not needed;
  * written on another host: its process is alive while its heartbeat is younger than `stale_s` (the
    hosts' clocks must agree to well within that, as NTP keeps them);
  * a lease whose process is not alive was left by one that died (e.g. a job requeued onto another node):
    it is taken over, with a note.
- Leases are removed when their work is finished or when the process ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from remit.common.atomic import temporary_path, write_json_atomic

K = TypeVar("K")
L = TypeVar("L", bound="Leases[Any]")

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
    job: str | None = None
    """The scheduler's job id (Slurm, torchrun), when there is one."""

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        job = f", job {self.job}" if self.job else ""
        return f"pid {self.pid} on {self.host} (rank {self.rank}{job}, heartbeat {age:.0f} s ago)"

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
                job=None if data.get("job") is None else str(data["job"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def job_id() -> str | None:
    """The scheduler's id of this job: Slurm's, else torchrun's run id."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or None


class Leases(Generic[K]):
    """The leases one process holds, each a file named by `path_of(key)`; a context manager that runs the
    heartbeat and releases on exit. `what(key)` names a key in messages ("unit 3", "run folder RUN"),
    `holder` the kind of process that holds one ("worker", "training job")."""

    def __init__(
        self,
        path_of: Callable[[K], Path],
        rank: int,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
        what: Callable[[K], str] = str,
        holder: str = "process",
    ) -> None:
        self.path_of, self.what, self.holder, self.rank = path_of, what, holder, rank
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.host, self.boot = socket.gethostname(), _boot_id()
        self.token = uuid.uuid4().hex
        self.held: set[K] = set()
        self.taken_over: list[str] = []
        """Leases taken over from holders that are gone, when `acquire` was asked not to note each."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the rule ------------------------------------------------------------------------------------

    def me(self) -> Holder:
        pid = os.getpid()
        return Holder(self.host, self.boot, pid, process_start(pid), self.rank, self.token, time.time(), job_id())

    def alive(self, h: Holder) -> bool:
        """Whether the worker that wrote `h` is alive (see the module docstring)."""
        if h.host == self.host and h.boot == self.boot and h.boot is not None:
            if not pid_alive(h.pid):
                return False
            return h.started is None or process_start(h.pid) in (None, h.started)
        return time.time() - h.heartbeat < self.stale_s

    def read(self, unit: K) -> Holder | None:
        try:
            return Holder.from_dict(json.loads(self.path_of(unit).read_text()))
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

    def acquire(self, unit: K, note: bool = True) -> Holder | None:
        """Take the lease of `unit`. Returns None when this process holds it now, else the live one that does.

        A lease of a holder that is gone is taken over with a note on stderr; with `note` False, the note is
        added to `taken_over` instead (for a caller that takes many and reports them in one line)."""
        path = self.path_of(unit)
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
            gone = f"{self.what(unit)}" + (f" ({other.describe()})" if other is not None else "")
            if note:
                print(f"{gone}: taking over the lease of a {self.holder} that is gone", file=sys.stderr, flush=True)
            else:
                self.taken_over.append(gone)
            write_json_atomic(path, asdict(self.me()))
        if not self.holds(unit):
            return self.read(unit) or other
        with self._lock:
            self.held.add(unit)
        return None

    def holds(self, unit: K) -> bool:
        h = self.read(unit)
        return h is not None and h.token == self.token

    def release(self, unit: K) -> None:
        with self._lock:
            self.held.discard(unit)
        if self.holds(unit):
            self.path_of(unit).unlink(missing_ok=True)

    # -- the heartbeat -------------------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with self._lock:
                units = list(self.held)
            for unit in units:
                try:
                    if self.holds(unit):
                        write_json_atomic(self.path_of(unit), asdict(self.me()))
                except OSError:
                    pass  # the next beat tries again; a lease is stale only after stale_s

    def __enter__(self: L) -> L:
        self._thread = threading.Thread(target=self._beat, name="remit-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for unit in list(self.held):
            self.release(unit)


__all__ = ["HEARTBEAT_S", "STALE_S", "Holder", "Leases", "job_id", "pid_alive", "process_start"]
