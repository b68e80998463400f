"""Peak memory and step time of the real trainer with the dense reference attention and the sdpa
document attention at several sequence lengths (CPU).

- Same model for every configuration, each in a fresh subprocess (its own peak RSS, ru_maxrss);
  the backends alternate order per length.
- Goal: memory grows about linearly with the sequence length on the sdpa path.

    python benchmarks/bench_train_attention.py [--seq-lens 512,1024,2048,4096] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import child


def measure(spec: dict[str, Any]) -> None:
    """One configuration, in the child: train `steps` steps; report peak memory and step times."""
    import torch

    torch.set_num_threads(spec["threads"])
    from remit.train.config import TrainConfig
    from remit.train.trainer import train

    start_rss, _ = child.rss_mib()  # torch and megatron imported, no model yet
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
    _, peak = child.rss_mib()
    timed = times[2:] or times
    child.report(
        {"start_rss_mib": start_rss, "peak_rss_mib": peak, "step_s": statistics.median(timed), "step_min_s": min(timed)}
    )


def sweep(args: argparse.Namespace, seq_lens: list[int], backends: list[str]) -> dict[str, dict[int, dict]]:
    """Every backend at every length, one child each; prints a line per configuration."""
    from remit.annotate.demo import tiny_llama
    from remit.shards.synthetic import make_output

    results: dict[str, dict[int, dict]] = {b: {} for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
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
                run = child.run(__file__, spec, env={"OMP_NUM_THREADS": str(args.threads)})
                if run.returncode != 0 or run.result is None:
                    raise SystemExit(f"{backend} at {s}: exit {run.returncode}\n{run.stderr[-3000:]}")
                r = results[backend][s] = run.result
                print(
                    f"  {backend:6s} S={s:5d}: peak RSS {r['peak_rss_mib']:8.1f} MiB "
                    f"(+{r['peak_rss_mib'] - r['start_rss_mib']:7.1f} over start), step median {r['step_s']:.3f} s, "
                    f"min {r['step_min_s']:.3f} s",
                    flush=True,
                )
    return results


def summarize(args: argparse.Namespace, seq_lens: list[int], backends: list[str], results: dict) -> None:
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


def main() -> None:
    spec = child.child_spec(sys.argv[1:])
    if spec is not None:
        return measure(spec)
    p = argparse.ArgumentParser(prog="bench_train_attention.py", description=__doc__)
    p.add_argument("--seq-lens", default="512,1024,2048,4096", help="comma-separated (default: 512..4096)")
    p.add_argument("--backends", default="dense,sdpa", help="comma-separated (default: dense,sdpa)")
    p.add_argument("--steps", type=int, default=8, help="steps per configuration; the first 2 are not timed")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run (default: 2)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    backends = args.backends.split(",")
    results = sweep(args, seq_lens, backends)
    summarize(args, seq_lens, backends, results)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}, indent=2) + "\n")


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__
    main()
