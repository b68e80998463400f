"""How long a checkpoint save stalls training: synchronous saves against --async-save, on the real trainer
(CPU, one process, a random Llama of about 100M parameters: ~1.2 GB of checkpoint with Adam state).

The stall of a save is the wall time between the end of the step before it and the end of the step after
it, minus a median step: what the save added to the run. Synchronous saves include rank 0's hashing
(now spread over the ranks); asynchronous ones hand the writing and the hashing of each rank's files to
the background writer, and the tracker moves when every rank is done.

    python benchmarks/bench_save.py [--hidden 768] [--layers 12] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import child


def measure(spec: dict) -> dict:
    from remit.annotate.demo import tiny_llama
    from remit.shards.synthetic import make_output
    from remit.train.config import TrainConfig
    from remit.train.trainer import train

    root = Path(spec["root"])
    model_dir = root / "model"
    if not model_dir.exists():
        h = spec["hidden"]
        tiny_llama(1024, seed=1, hidden=h, layers=spec["layers"], heads=12, kv_heads=4, ffn=4 * h).save_pretrained(
            model_dir
        )
    out = root / "out"
    if not out.exists():
        make_output(out, n_docs=400, seq_len=128, vocab=1024, doc_len=(20, 300), rows_per_shard=64, seed=0)
    ends: list[float] = []
    cfg = TrainConfig(
        data=out, weights="static", init_hf=model_dir, save=root / f"run-{spec['mode']}", train_iters=spec["steps"],
        micro_batch_size=2, global_batch_size=2, lr=1e-4, log_interval=10**6, save_interval=spec["every"],
        async_save=spec["mode"] == "async",
    )  # fmt: skip
    t0 = time.perf_counter()
    train(cfg, observer=lambda step, ids, rec: ends.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(ends, ends[1:])]  # gap k: the end of step k+1 to the end of step k+2
    saving = [k for k in range(len(gaps)) if (k + 1) % spec["every"] == 0]  # the save after step k+1
    plain = [g for k, g in enumerate(gaps) if k not in saving]
    step = statistics.median(plain)
    stalls = [gaps[k] - step for k in saving]
    last = sorted((root / f"run-{spec['mode']}").glob("iter_*"))[-1]
    size = sum(p.stat().st_size for p in last.rglob("*") if p.is_file())
    return {"mode": spec["mode"], "step_s": step, "stall_s": statistics.median(stalls), "total_s": total, "bytes": size}


def main() -> None:
    spec = child.child_spec(sys.argv[1:])
    if spec is not None:
        child.report(measure(spec))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("sync", "async"):
            spec = {
                "root": tmp,
                "mode": mode,
                "hidden": args.hidden,
                "layers": args.layers,
                "steps": args.steps,
                "every": 2,
            }
            got = child.run(__file__, spec, env={"OMP_NUM_THREADS": "2"})
            if got.result is None:
                raise SystemExit(f"bench_save: the {mode} run failed:\n{got.stderr[-3000:]}")
            results.append(got.result)
    sync, asyn = results
    print("| saves | checkpoint | median step | stall per save | run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['mode']} | {r['bytes'] / 2**30:.2f} GiB | {r['step_s']:.2f} s | {r['stall_s']:.2f} s | {r['total_s']:.1f} s |"
        )
    print(f"\nstall per save, async / sync: {asyn['stall_s'] / max(sync['stall_s'], 1e-9):.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
