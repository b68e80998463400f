"""Training cost of the ReMiT weights, whether the shard loader keeps up, the attention's memory; and, on
a GPU, a ~1B model.

CPU (default), in one process, on one tiny Llama and one synthetic output:
  1. step time of the real trainer with --weights none, static and online, in interleaved rounds
     (so that load from other processes on the machine hits all modes alike), median per mode;
  2. loader throughput (shards -> device micro-batches, the trainer's own path) in tokens/s against
     the tokens/s the training steps consume.
Targets: static and online add <= 3% step time over none; the loader delivers >= 20x consumption.

    python benchmarks/bench_train.py [--seq-len 256] [--steps 12] [--rounds 3] [--json out.json]

`attention`: peak memory and step time of the real trainer with the dense reference attention and the
sdpa document attention at several sequence lengths, same model, one fresh subprocess per
configuration (its own peak RSS, ru_maxrss), backends interleaved. Goal: memory grows about linearly
with the sequence length on the sdpa path.

    python benchmarks/bench_train.py attention [--seq-lens 512,1024,2048,4096] [--steps 8] [--json out.json]

`kernels`: what torch's scaled_dot_product_attention does on this machine, forward and backward of one
[1, 8 heads, S, 64] attention, each in a fresh subprocess: peak RSS of is_causal=True (no mask), of an
explicit [S, S] bool mask (both restricted to the flash kernel, as the sdpa backend restricts them), and
of the unfused math (scores materialised).

    python benchmarks/bench_train.py kernels [--seq-lens 1024,4096]

GPU (`--gpu`, one GPU, one command; prints "skipped" and exits 0 without CUDA): a randomly
initialised Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192,
vocabulary 128256, tied embeddings; 1.24B parameters) trained by the real trainer in bf16 with its
default attention path, at 4096 tokens per sequence, micro-batch 1. Per weight mode: tokens/s,
MFU (model FLOPs, see `train_flops`, over the GPU's dense bf16 peak) and peak memory; the weights'
overhead over `none`; then whether the same model fits at 8192 tokens (and, if not, with
--recompute-granularity selective). Each measurement is its own child process (a clean CUDA context,
an out-of-memory error stays there); the final checkpoint save is skipped, the steps are timed.
Targets: >= 35% MFU on an H100-class GPU without Transformer Engine, weight overhead <= 3%, fits at 8192.

    python benchmarks/bench_train.py --gpu [--gpu-steps 12] [--peak-tflops 989] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(root: Path, seq_len: int, hidden: int, layers: int) -> tuple[Path, Path]:
    from remit.annotate.demo import tiny_llama
    from remit.shards.synthetic import make_output

    model_dir = root / "model"
    # No tokenizer files: the trainer then checks the vocabulary size only.
    tiny_llama(1024, seed=1, hidden=hidden, layers=layers, heads=4, kv_heads=2, ffn=3 * hidden).save_pretrained(
        model_dir
    )
    out = make_output(
        root / "out", n_docs=600, seq_len=seq_len, vocab=1024, doc_len=(20, 600), rows_per_shard=64, seed=0
    )
    return model_dir, out


def step_times(model_dir: Path, out: Path, root: Path, mode: str, steps: int, mbs: int, gbs: int) -> list[float]:
    from remit.train.config import TrainConfig
    from remit.train.trainer import train

    times: list[float] = []
    cfg = TrainConfig(
        data=out,
        weights=mode,
        init_hf=model_dir,
        save=root / f"run-{mode}-{time.time_ns()}",
        train_iters=steps,
        micro_batch_size=mbs,
        global_batch_size=gbs,
        lr=1e-4,
        log_interval=10**6,
        skip_validate=True,
    )
    train(cfg, observer=lambda step, ids, rec: times.append(rec["step_time_s"]))
    return times[2:]  # the first steps warm up allocators and the shard cache


def loader_tokens_per_s(out: Path, seq_len: int, mbs: int, batches: int) -> float:
    from remit.train import cpu_compat
    from remit.train.dataset import RemitDataset
    from remit.train.loader import to_device
    from remit.train.sampler import SampleOrder, micro_batches

    ds = RemitDataset(out, create_attention_mask=False)
    it = micro_batches(ds, SampleOrder(ds.shard_rows, seed=0), global_batch=mbs, micro_batch=mbs, dp_rank=0, dp_size=1)
    device = cpu_compat.device()  # as in training: batches are moved to the training device
    for _ in range(5):
        to_device(next(it), device)
    t0 = time.perf_counter()
    for _ in range(batches):
        to_device(next(it), device)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return batches * mbs * seq_len / (time.perf_counter() - t0)


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    import resource

    current = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def attention_child(spec: dict) -> None:
    """One configuration in its own process: train `steps` steps; print one JSON line."""
    import torch

    torch.set_num_threads(spec["threads"])
    from remit.train.config import TrainConfig
    from remit.train.trainer import train

    start_rss, _ = _rss_mib()  # torch and megatron imported, no model yet
    times: list[float] = []
    cfg = TrainConfig(
        data=spec["data"],
        weights="online",
        init_hf=spec["model"],
        save=spec["save"],
        attention=spec["attention"],
        train_iters=spec["steps"],
        micro_batch_size=1,
        global_batch_size=1,
        lr=1e-4,
        log_interval=10**6,
        skip_validate=True,
    )
    train(cfg, observer=lambda step, ids, rec: times.append(rec["step_time_s"]))
    _, peak = _rss_mib()
    timed = times[2:] or times
    print(
        "RESULT "
        + json.dumps(
            {
                "start_rss_mib": start_rss,
                "peak_rss_mib": peak,
                "step_s": statistics.median(timed),
                "step_min_s": min(timed),
            }
        ),
        flush=True,
    )


def attention_sweep(argv: list[str]) -> None:
    import os
    import subprocess
    import sys

    p = argparse.ArgumentParser(prog="bench_train.py attention", description=__doc__)
    p.add_argument("--seq-lens", default="512,1024,2048,4096", help="comma-separated (default: 512..4096)")
    p.add_argument("--backends", default="dense,sdpa", help="comma-separated (default: dense,sdpa)")
    p.add_argument("--steps", type=int, default=8, help="steps per configuration; the first 2 are not timed")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run (default: 2)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    backends = args.backends.split(",")
    here = Path(__file__).resolve()
    results: dict[str, dict[int, dict]] = {b: {} for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from remit.annotate.demo import tiny_llama
        from remit.shards.synthetic import make_output

        model_dir = root / "model"
        # Llama-shaped: 4 heads of 64, 2 KV heads, SwiGLU 3x; no tokenizer files (vocabulary size check only).
        tiny_llama(1024, seed=1, hidden=args.hidden, layers=args.layers, heads=4, kv_heads=2, ffn=3 * args.hidden,
                   max_positions=max(seq_lens)).save_pretrained(model_dir)  # fmt: skip
        for k, s in enumerate(seq_lens):
            # Documents of 50-3000 tokens: several per row at 4096, cut by row ends at 512.
            data = make_output(root / f"out-{s}", n_docs=max(12, (args.steps + 2) * s // 1000), seq_len=s,
                               vocab=1024, doc_len=(50, 3000), rows_per_shard=64, seed=s)  # fmt: skip
            for backend in backends[k % 2 :] + backends[: k % 2]:  # alternate the order
                spec = {
                    "data": str(data),
                    "model": str(model_dir),
                    "save": str(root / f"run-{backend}-{s}"),
                    "attention": backend,
                    "steps": args.steps,
                    "threads": args.threads,
                }
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
                proc = subprocess.run(
                    [sys.executable, str(here), "attention-child", json.dumps(spec)],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    raise SystemExit(f"{backend} at {s}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
                results[backend][s] = json.loads(line[0][len("RESULT ") :])
                r = results[backend][s]
                print(
                    f"  {backend:6s} S={s:5d}: peak RSS {r['peak_rss_mib']:8.1f} MiB "
                    f"(+{r['peak_rss_mib'] - r['start_rss_mib']:7.1f} over start), step median {r['step_s']:.3f} s, "
                    f"min {r['step_min_s']:.3f} s",
                    flush=True,
                )
    print(f"model: Llama-shaped, hidden {args.hidden}, {args.layers} layers, 4 heads / 2 KV, micro-batch 1, fp32")
    print("memory: peak RSS above the process's RSS before the model was built (model, optimizer, activations)")
    print("time: minimum step time (the least disturbed by other load on the machine)")
    print(f"{'S':>6} " + " ".join(f"{b + ' MiB':>14} {b + ' s':>9}" for b in backends) + "   memory and time ratios")
    for s in seq_lens:
        cells = " ".join(
            f"{results[b][s]['peak_rss_mib'] - results[b][s]['start_rss_mib']:14.1f} {results[b][s]['step_min_s']:9.3f}"
            for b in backends
        )
        extra = ""
        if {"dense", "sdpa"} <= set(backends):
            d, n = results["dense"][s], results["sdpa"][s]
            mem = (d["peak_rss_mib"] - d["start_rss_mib"]) / (n["peak_rss_mib"] - n["start_rss_mib"])
            extra = f"   dense/sdpa memory {mem:5.2f}x, time {d['step_min_s'] / n['step_min_s']:5.2f}x"
        print(f"{s:6d} {cells}{extra}")
    for b in backends:
        grow = [
            (results[b][s2]["peak_rss_mib"] - results[b][s2]["start_rss_mib"])
            / (results[b][s1]["peak_rss_mib"] - results[b][s1]["start_rss_mib"])
            for s1, s2 in zip(seq_lens, seq_lens[1:])
        ]
        slope = [
            (results[b][s2]["peak_rss_mib"] - results[b][s1]["peak_rss_mib"]) / (s2 - s1)
            for s1, s2 in zip(seq_lens, seq_lens[1:])
        ]
        print(
            f"{b}: memory growth per step of seq-len: "
            + ", ".join(f"{g:.2f}x" for g in grow)
            + "; MiB per added token: "
            + ", ".join(f"{m:.3f}" for m in slope)
            + " (constant = linear)"
        )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}, indent=2) + "\n")


def kernel_child(seq_len: int, mode: str) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, seq_len, 64, generator=g, requires_grad=True) for _ in range(3))
    _, before = _rss_mib()
    t0 = time.perf_counter()
    if mode == "math":
        blocked = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
        out = torch.softmax((q @ k.transpose(-1, -2) / 8).masked_fill(blocked, float("-inf")), -1) @ v
    else:
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril() if mode == "mask" else None
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mode == "causal")
    out.sum().backward()
    elapsed = time.perf_counter() - t0
    _, peak = _rss_mib()
    print("RESULT " + json.dumps({"extra_mib": peak - before, "s": elapsed}), flush=True)


def kernels(argv: list[str]) -> None:
    import subprocess
    import sys

    p = argparse.ArgumentParser(prog="bench_train.py kernels", description=__doc__)
    p.add_argument("--seq-lens", default="1024,4096")
    args = p.parse_args(argv)
    print("forward + backward of one [1, 8, S, 64] attention, fp32; peak RSS above the inputs, fresh process each")
    for s in (int(x) for x in args.seq_lens.split(",")):
        for mode in ("causal", "mask", "math"):
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "kernel-child", str(s), mode],
                capture_output=True,
                text=True,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"  S={s:5d} {mode:7s} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[0][len("RESULT ") :])
            print(f"  S={s:5d} {mode:7s} +{r['extra_mib']:8.1f} MiB  {r['s']:.3f} s")


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "kernels":
        return kernels(sys.argv[2:])
    if len(sys.argv) > 2 and sys.argv[1] == "kernel-child":
        return kernel_child(int(sys.argv[2]), sys.argv[3])

    if len(sys.argv) > 1 and sys.argv[1] == "attention":
        return attention_sweep(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "attention-child":
        return attention_child(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default: 256)")
    p.add_argument("--hidden", type=int, default=128, help="model width (default: 128)")
    p.add_argument("--layers", type=int, default=2, help="model depth (default: 2)")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--global-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="steps per mode per round (first 2 not timed)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the three modes")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: 1; one thread keeps timings stable on a shared machine)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    # --- GPU: the ~1B model ---
    p.add_argument("--gpu", action="store_true", help="run the ~1B bf16 GPU benchmark instead (skips without CUDA)")
    p.add_argument(
        "--gpu-shape",
        default=",".join(str(v) for v in LLAMA_1B.values()),
        help="hidden,layers,heads,kv_heads,ffn,vocab of the GPU model (default: Llama-3.2-1B's)",
    )
    p.add_argument("--gpu-seq-len", type=int, default=4096, help="tokens per sequence (default: 4096)")
    p.add_argument("--gpu-fit-seq-len", type=int, default=8192, help="the longer length to check (default: 8192)")
    p.add_argument("--gpu-global-batch", type=int, default=8, help="sequences per step, micro-batch 1 (default: 8)")
    p.add_argument("--gpu-steps", type=int, default=12, help="steps per mode, the first 2 not timed (default: 12)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's dense bf16 peak in TFLOP/s for MFU (default: from the device name, see PEAK_BF16_TFLOPS)",
    )
    p.add_argument("--work", type=Path, default=None, help="GPU: folder for the model and data (default: a temp dir)")
    p.add_argument("--gpu-child", default=None, help=argparse.SUPPRESS)  # one measurement, run by --gpu
    args = p.parse_args()
    if args.gpu_child is not None:
        gpu_child(json.loads(args.gpu_child))
        return
    if args.gpu:
        gpu_main(args)
        return

    import torch

    torch.set_num_threads(args.threads)

    from remit.train import cpu_compat

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, out = make_inputs(root, args.seq_len, args.hidden, args.layers)
        modes = ["none", "static", "online"]
        samples: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes[r % 3 :] + modes[: r % 3]:  # rotate the order each round
                samples[mode] += step_times(
                    model_dir, out, root, mode, args.steps, args.micro_batch_size, args.global_batch_size
                )
        loader = loader_tokens_per_s(out, args.seq_len, args.micro_batch_size, batches=200)

    median = {m: statistics.median(v) for m, v in samples.items()}
    consumed = args.global_batch_size * args.seq_len / median["none"]
    result = {
        "device": "cpu" if cpu_compat.cuda_absent() else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": 1024},
        "seq_len": args.seq_len,
        "micro_batch_size": args.micro_batch_size,
        "global_batch_size": args.global_batch_size,
        "timed_steps_per_mode": len(samples["none"]),
        "step_time_ms": {m: round(1e3 * v, 2) for m, v in median.items()},
        "step_time_iqr_ms": {
            m: [round(1e3 * float(q), 2) for q in np.percentile(v, [25, 75])] for m, v in samples.items()
        },
        "overhead_vs_none": {m: round(median[m] / median["none"] - 1.0, 4) for m in ("static", "online")},
        "train_tokens_per_s": round(consumed),
        "loader_tokens_per_s": round(loader),
        "loader_over_training": round(loader / consumed, 1),
    }
    print(f"step time (median of {len(samples['none'])} steps, {args.global_batch_size}x{args.seq_len} tokens/step):")
    for m in modes:
        extra = "" if m == "none" else f"  ({100 * result['overhead_vs_none'][m]:+.1f}% vs none)"
        print(f"  {m:7s} {result['step_time_ms'][m]:8.2f} ms  IQR {result['step_time_iqr_ms'][m]}{extra}")
    print(
        f"training consumes {result['train_tokens_per_s']:,} tok/s; loader delivers "
        f"{result['loader_tokens_per_s']:,} tok/s = {result['loader_over_training']}x"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


# --- GPU: a ~1B Llama-shaped model in bf16 -----------------------------------------------------------

#: Llama-3.2-1B's shape (hidden, layers, heads, kv_heads, ffn, vocab); plain RoPE with theta 500000.
LLAMA_1B = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "ffn": 8192, "vocab": 128256}
#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of the device name, first match.
PEAK_BF16_TFLOPS = (
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
)


def train_flops(shape: dict, seq_len: int, sequences: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward; recomputation not counted).

    Per token and forward pass: 2 x the weights of every matrix multiply (q, k, v, o, gate, up, down in
    each layer, and the output layer, tied or not), plus 2 x 2 x seq_len x heads x head_dim per layer
    for QK^T and PV over the full S x S (what the dense attention computes; with a causal or document
    mask the useful work is less). The embedding lookup is not a multiply."""
    h, layers, heads, kv_heads, ffn, vocab = (
        shape[k] for k in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab")
    )
    head_dim = h // heads
    per_layer = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h + 3 * h * ffn
    forward_per_token = 2 * (layers * per_layer + vocab * h) + layers * 4 * seq_len * heads * head_dim
    return 3.0 * forward_per_token * seq_len * sequences


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def make_gpu_model(path: Path, shape: dict) -> Path:
    """A random Llama of `shape` with tied embeddings, saved in bf16 (no tokenizer: the trainer then
    checks the vocabulary size only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(path)
    return path


def gpu_child(spec: dict) -> None:
    """One measurement in this process: train `spec['steps']` steps and print a RESULT line."""
    import torch

    from remit.train import trainer
    from remit.train.config import TrainConfig

    # Timed steps only: the final checkpoint of a 1B model (bf16 weights + fp32 Adam) is not measured.
    trainer.save_checkpoint = lambda *args, **kwargs: None
    cfg = TrainConfig(
        data=spec["data"],
        weights=spec["mode"],
        init_hf=spec["model"],
        save=spec["save"],
        train_iters=spec["steps"],
        micro_batch_size=1,
        global_batch_size=spec["global_batch"],
        lr=1e-5,
        log_interval=spec["steps"],
        skip_validate=True,
        shuffle_shards=1,
        bf16=True,
        recompute_granularity=spec.get("recompute"),
    )
    times: list[float] = []
    torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train(cfg, observer=lambda step, ids, rec: times.append(rec["step_time_s"]))
        out = {"ok": True, "step_times": times}
    except torch.cuda.OutOfMemoryError as e:
        out = {"ok": False, "oom": True, "error": str(e).splitlines()[0][:300]}
    out.update(
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        device=torch.cuda.get_device_name(),
        total_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
    )
    print("RESULT " + json.dumps(out), flush=True)


def run_child(spec: dict, timeout: int = 3600) -> dict:
    env = {**os.environ, "CUDA_DEVICE_MAX_CONNECTIONS": "1", "PYTHONWARNINGS": "ignore"}
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, "--gpu-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    shutil.rmtree(spec["save"], ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    oom = "out of memory" in proc.stderr.lower()
    return {"ok": False, "oom": oom, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def gpu_main(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        print("bench_train --gpu: skipped, no CUDA device (nothing measured)")
        return
    from remit.shards.synthetic import make_output

    values = [int(v) for v in args.gpu_shape.split(",")]
    shape = dict(zip(LLAMA_1B, values))
    device = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(device)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = make_gpu_model(work / "model", shape)
    data = {}
    for seq in (args.gpu_seq_len, args.gpu_fit_seq_len):
        data[seq] = work / f"data-{seq}"
        if not (data[seq] / "manifest.json").exists():
            make_output(
                data[seq],
                n_docs=12 + 4 * args.gpu_global_batch * seq // 1024,
                seq_len=seq,
                vocab=shape["vocab"],
                doc_len=(200, 2 * seq),
                rows_per_shard=64,
                seed=0,
            )
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s ({work})", flush=True)

    head_dim = shape["hidden"] // shape["heads"]
    n_params = (
        shape["vocab"] * shape["hidden"]
        + shape["hidden"]
        + shape["layers"]
        * (  # tied embedding, final norm
            2 * shape["hidden"] * shape["heads"] * head_dim  # q, o
            + 2 * shape["hidden"] * shape["kv_heads"] * head_dim  # k, v
            + 3 * shape["hidden"] * shape["ffn"]  # gate, up, down
            + 2 * shape["hidden"]  # the two norms
        )
    )
    seq, gbs = args.gpu_seq_len, args.gpu_global_batch
    flops = train_flops(shape, seq, gbs)
    result: dict = {
        "device": device,
        "peak_bf16_tflops": peak,
        "model": {**shape, "params": n_params, "tied_embeddings": True},
        "seq_len": seq,
        "micro_batch_size": 1,
        "global_batch_size": gbs,
        "model_tflop_per_step": flops / 1e12,
        "modes": {},
    }
    for mode in ("none", "static", "online"):
        spec = {"model": str(model), "data": str(data[seq]), "save": str(work / f"run-{mode}"), "mode": mode}
        r = run_child({**spec, "steps": args.gpu_steps, "global_batch": gbs})
        if r.get("ok"):
            timed = r["step_times"][2:]
            step = statistics.median(timed)
            r.update(
                median_step_s=step,
                tokens_per_s=gbs * seq / step,
                mfu=(flops / step / (peak * 1e12)) if peak else None,
            )
        result["modes"][mode] = r
        print(f"{mode}: {json.dumps({k: v for k, v in r.items() if k != 'step_times'})}", flush=True)
    if all(result["modes"][m].get("ok") for m in ("none", "static", "online")):
        base = result["modes"]["none"]["median_step_s"]
        result["overhead_vs_none"] = {m: result["modes"][m]["median_step_s"] / base - 1.0 for m in ("static", "online")}
    fit = {}
    for recompute in (None, "selective"):
        spec = {
            "model": str(model),
            "data": str(data[args.gpu_fit_seq_len]),
            "save": str(work / "run-fit"),
            "mode": "online",
            "steps": 3,
            "global_batch": 1,
            "recompute": recompute,
        }
        r = run_child(spec)
        fit[recompute or "no recompute"] = {
            k: r.get(k) for k in ("ok", "oom", "peak_allocated_gib", "peak_reserved_gib", "error") if k in r
        }
        print(
            f"fit at {args.gpu_fit_seq_len}, {recompute or 'no recompute'}: {fit[recompute or 'no recompute']}",
            flush=True,
        )
        if r.get("ok"):
            break
    result["fit"] = {"seq_len": args.gpu_fit_seq_len, **fit}

    print(f"\n{device}, {n_params / 1e9:.2f}B parameters, bf16, {gbs} x {seq} tokens per step (micro-batch 1):")
    print(f"  {'mode':7s} {'step':>9s} {'tokens/s':>10s} {'MFU':>7s} {'peak mem':>10s}")
    for mode, r in result["modes"].items():
        if not r.get("ok"):
            print(f"  {mode:7s} failed: {r.get('error')}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(
            f"  {mode:7s} {r['median_step_s']:8.3f}s {r['tokens_per_s']:10,.0f} {mfu:>7s} "
            f"{r['peak_allocated_gib']:8.1f} GiB"
        )
    for m, v in result.get("overhead_vs_none", {}).items():
        print(f"  {m} vs none: {100 * v:+.1f}% step time (target <= 3%)")
    for how, r in fit.items():
        verdict = "fits" if r.get("ok") else ("out of memory" if r.get("oom") else f"failed ({r.get('error')})")
        peak_mem = f", peak {r['peak_allocated_gib']:.1f} GiB" if r.get("peak_allocated_gib") else ""
        print(f"  {args.gpu_fit_seq_len} tokens, {how}: {verdict}{peak_mem}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__
    main()
