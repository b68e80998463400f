"""benchmarks/bench_train_gpu.py: a clean skip without CUDA, and (on a GPU) one short run of the whole
measurement on a small model. Its FLOP count is the trainer's (remit.train.flops, tests/train/test_flops.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.runs import REPO, env

SCRIPT = REPO / "benchmarks" / "bench_train_gpu.py"


def _run(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_gpu_benchmark_skips_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU test below runs the benchmark")
    proc = _run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "bench_train_gpu: skipped, no CUDA device (nothing measured)"


@pytest.mark.gpu
@pytest.mark.megatron
def test_gpu_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    proc = _run(
        "--gpu-shape", "256,2,4,2,512,1024", "--gpu-seq-len", "512", "--gpu-fit-seq-len", "1024",
        "--gpu-steps", "4", "--gpu-global-batch", "2", "--peak-tflops", "100", "--work", str(tmp_path / "w"),
        "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for mode in ("none", "static", "online"):
        r = result["modes"][mode]
        assert r["ok"] and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_allocated_gib"] > 0, r
    assert set(result["overhead_vs_none"]) == {"static", "online"}
    assert result["fit"]["seq_len"] == 1024 and result["fit"]["no recompute"]["ok"]
