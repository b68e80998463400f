"""Running the real trainer in subprocesses, as it is launched: one plain process, or torchrun with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dp_worker.py")
#: The baseline run's schedule, as CLI flags (the worker's defaults are the same values).
BASE_FLAGS = [
    "--weights",
    "online",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--lr",
    "1e-3",
    "--lr-warmup-iters",
    "2",
    "--seed",
    "7",
    "--shuffle-shards",
    "2",
]


def two_ranks() -> pytest.MarkDecorator:
    import torch

    return pytest.mark.skipif(
        torch.cuda.is_available() and torch.cuda.device_count() < 2,
        reason="two NCCL ranks need two GPUs (on the CPU, gloo runs both)",
    )


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def remit_train(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """`remit-train ARGS` (not checked: the caller asserts on the outcome)."""
    return run([*launcher(nproc), "-m", "remit.train", *map(str, args)])


def worker(data: Path, save: Path, record: Path, *, nproc: int = 1, tp: int = 1, **opts: Any) -> None:
    """The trainer through tests/train/dp_worker.py, which records what each rank did."""
    args = [str(data), str(save), str(record), str(tp), *(f"{k}={v}" for k, v in opts.items())]
    ok(run([*launcher(nproc), str(WORKER), *args]))


def record(prefix: Path, rank: int) -> dict:
    return json.loads(Path(f"{prefix}.rank{rank}.json").read_text())


def grads(prefix: Path, rank: int) -> dict:
    import torch

    return torch.load(f"{prefix}.rank{rank}.pt")


def metrics(save: Path) -> list[dict]:
    from remit.train.metrics import read_metrics

    return read_metrics(save)
