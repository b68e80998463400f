"""benchmarks/bench_train_gpu.py: its FLOP count against torch's own counter, a clean skip without
CUDA, and (on a GPU) one short run of the whole measurement on a small model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.train.runs import REPO, env

SCRIPT = REPO / "benchmarks" / "bench_train_gpu.py"


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(SCRIPT.parent)  # the script imports its sibling `child`, as when run
    spec = importlib.util.spec_from_file_location("bench_train_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tie", [False, True])
def test_train_flops_equals_torch_flop_counter(tie, monkeypatch):
    """The MFU numerator, checked against torch's FlopCounterMode on a Hugging Face Llama forward pass
    (eager attention: QK^T and PV as plain matmuls over the full S x S), times 3 for training."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {"hidden": 64, "layers": 3, "heads": 4, "kv_heads": 2, "ffn": 160, "vocab": 300}
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        tie_word_embeddings=tie,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    seq, batch = 48, 3
    ids = torch.randint(0, shape["vocab"], (batch, seq))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    assert _bench(monkeypatch).train_flops(shape, seq, batch) == 3 * counter.get_total_flops()


def test_peak_table_picks_the_right_part(monkeypatch):
    bench = _bench(monkeypatch)
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bench.peak_tflops("NVIDIA H200") == 989.4
    assert bench.peak_tflops("Some Other GPU") is None


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
