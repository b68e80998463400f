"""Training cost of the ReMiT weights, and whether the shard loader keeps up (CPU, one process, one tiny
Llama, one synthetic output).

- Step time of the real trainer with --weights none, static and online, in interleaved rounds (so
  that load from other processes on the machine hits all modes alike), median per mode.
- Loader throughput (shards -> device micro-batches, the trainer's own path) in tokens/s against the
  tokens/s the training steps consume.
- Targets: static and online add <= 3% step time over none; the loader delivers >= 20x consumption.

    python benchmarks/bench_train_weights.py [--seq-len 256] [--steps 12] [--rounds 3] [--json out.json]
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


def main() -> None:
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
