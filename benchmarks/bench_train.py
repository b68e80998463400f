"""Training cost of the ReMiT weights, whether the shard loader keeps up, and the attention's memory.

Default, in one process, on one tiny Llama and one synthetic output:
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
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_inputs(root: Path, seq_len: int, hidden: int, layers: int) -> tuple[Path, Path]:
    from remit.annotate.demo import tiny_llama
    from tests.synthetic import make_output

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
        from tests.synthetic import make_output

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
    args = p.parse_args()

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


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__
    main()
