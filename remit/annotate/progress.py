"""Log-friendly progress: a periodic line with count, rate and ETA (readable in Slurm logs, no ANSI)."""

from __future__ import annotations

import sys
import time


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _fmt_count(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


class Progress:
    def __init__(
        self, label: str, *, total: float | None = None, unit: str = "tok", every_s: float = 10.0, stream=None
    ) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0.0
        self.start = self.last = time.perf_counter()

    def update(self, n: float) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._print(now)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"[{self.label}] {_fmt_count(self.done)}"]
        if self.total:
            parts[0] += f"/{_fmt_count(self.total)} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            parts[0] += f" {self.unit}"
        parts.append(f"{_fmt_count(rate)} {self.unit}/s")
        if final:
            parts.append(f"took {_fmt_seconds(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_fmt_seconds((self.total - self.done) / rate)}")
        print(", ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        self._print(time.perf_counter(), final=True)
