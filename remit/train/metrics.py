"""`metrics.jsonl` (one JSON object per optimizer step) and the progress lines of a run.

Other tools read metrics.jsonl, so these keys are stable: step, loss (weighted), loss_unweighted,
mean_weight, frac_at_low, frac_at_high, lr, grad_norm, tokens (cumulative valid label tokens),
consumed_samples, step_time_s, tokens_per_s, tflops (achieved model TFLOP/s per device); mfu where the
device's peak is known; eval_loss, eval_loss_unweighted, eval_tokens after an evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from remit.common.atomic import write_text_atomic

METRICS_NAME = "metrics.jsonl"
STABLE_KEYS = (
    "step",
    "loss",
    "loss_unweighted",
    "mean_weight",
    "frac_at_low",
    "frac_at_high",
    "lr",
    "grad_norm",
    "tokens",
    "consumed_samples",
    "step_time_s",
    "tokens_per_s",
    "tflops",
)


class MetricsLog:
    """Appends one line per step; on resume, drops lines past the checkpoint so that the file is the
    run's single trajectory."""

    def __init__(self, save_dir: str | Path, resume_iteration: int = 0, enabled: bool = True) -> None:
        self.path = Path(save_dir) / METRICS_NAME
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            for i, line in enumerate(lines):
                try:
                    step = json.loads(line)["step"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    if i == len(lines) - 1:  # a line cut short when the process was killed mid-write
                        print(f"{self.path}: dropping its unreadable last line (an interrupted write)", flush=True)
                        continue
                    raise ValueError(
                        f"{self.path}: line {i + 1} is not a metrics record; move the file away to start it anew"
                    ) from None
                if step <= resume_iteration:
                    kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self) -> None:
        if self.enabled:
            self._file.close()


def read_metrics(save_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(save_dir) / METRICS_NAME
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _rate(r: dict[str, Any]) -> str:
    """Achieved TFLOP/s per device, with MFU where the peak is known."""
    tflops = r.get("tflops", 0.0)
    shown = f"{tflops:.1f}" if tflops >= 1 else f"{tflops:.3g}"
    return f"{shown} TFLOP/s" + (f" ({100 * r['mfu']:.1f}% MFU)" if r.get("mfu") is not None else "")


class Progress:
    """Periodic progress lines with rate and ETA, and a closing summary (printed by rank 0)."""

    def __init__(self, total_steps: int, start_step: int, every: int, enabled: bool) -> None:
        self.total, self.start, self.every, self.enabled = total_steps, start_step, every, enabled
        self.t0 = time.perf_counter()

    def step(self, r: dict[str, Any]) -> None:
        if not self.enabled or (r["step"] % self.every and r["step"] != self.total):
            return
        done = r["step"] - self.start
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - r["step"])
        print(
            f"step {r['step']}/{self.total} | loss {r['loss']:.4f} (unweighted {r['loss_unweighted']:.4f}) | "
            f"w {r['mean_weight']:.3f} [{100 * r['frac_at_low']:.1f}% low, {100 * r['frac_at_high']:.1f}% high] | "
            f"lr {r['lr']:.2e} | {r['tokens_per_s'] / 1e3:.1f}k tok/s | {_rate(r)} | eta {_duration(eta)}"
            + (f" | eval {r['eval_loss']:.4f}" if "eval_loss" in r else ""),
            flush=True,
        )

    def summary(self, last: dict[str, Any] | None, saved: Path | None) -> None:
        if not self.enabled or last is None:
            return
        took = time.perf_counter() - self.t0
        print(
            f"done: {last['step'] - self.start} steps in {_duration(took)}, final loss {last['loss']:.4f} "
            f"(unweighted {last['loss_unweighted']:.4f}), {last['tokens']} tokens trained"
            + (f"; checkpoint {saved}" if saved else ""),
            flush=True,
        )
