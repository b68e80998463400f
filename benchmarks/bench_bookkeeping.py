"""The cost of making annotation restartable: unit bookkeeping against scoring, in the same run.

Runs the annotation worker in-process on the tiny demo model pair and the bundled sample corpus (hf
engine, so the run is deterministic and needs no vLLM), and splits the worker's time into:

- scoring: the two engines' score() calls (the work itself);
- bookkeeping: what only resume needs. The completion-record writes, the pending-unit scan (reading
  and checking every record, one stat per shard), the sweep of leftovers, saving and deleting each
  unit's base log-probs between the two passes, and, inside the shard write, everything but the
  Parquet encoding: the token checksum, fsync, the read-back verification, the file's sha256, the
  rename and the directory fsync. The encoding is measured by wrapping `remit.shards.writer.write_table`
  (the one call that encodes), so the split is measured, not estimated;
- the rest (loading models, reading the planned units, weights, encoding), shown for context.

It prints bookkeeping / scoring per configuration (target <= 2%) and finalize's one-off check (every
shard hashed again) beside it. Small units are the worst case: per-unit costs are fixed while scoring
grows with the unit, so the defaults use small ones.

    .venv/bin/python benchmarks/bench_bookkeeping.py [--rows-per-shard 16 64] [--seq-len 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def run_once(models: tuple[Path, Path], corpus: Path, out: Path, seq_len: int, rows_per_shard: int) -> dict[str, Any]:
    import remit.shards.writer as writer
    from remit.annotate.config import AnnotateConfig
    from remit.annotate.finalize import finalize
    from remit.annotate.worker import BOOKKEEPING_KEYS, run_worker
    from remit.shards.validate import validate_output

    encode = {"s": 0.0}
    original = writer.write_table

    def timed_write_table(*args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter()
        original(*args, **kwargs)
        encode["s"] += time.perf_counter() - t0

    shutil.rmtree(out, ignore_errors=True)
    cfg = AnnotateConfig(
        base=models[0],
        rl=models[1],
        inputs=[corpus],
        output=out,
        engine="hf",
        seq_len=seq_len,
        rows_per_shard=rows_per_shard,
        progress_every_s=1e9,
    )
    writer.write_table = timed_write_table
    try:
        stats, plan = run_worker(cfg)
    finally:
        writer.write_table = original
    t0 = time.perf_counter()
    finalize(out)
    finalize_s = time.perf_counter() - t0
    problems = validate_output(out)
    if problems:  # a benchmark of a broken output would measure nothing
        raise SystemExit(f"the benchmark's output does not validate: {problems[:3]}")
    sec = stats.seconds
    scoring = sec.get("score_base", 0.0) + sec.get("score_rl", 0.0)
    shard_checks = sec.get("write", 0.0) - encode["s"]
    bookkeeping = sum(sec.get(k, 0.0) for k in BOOKKEEPING_KEYS) + shard_checks
    return {
        "units": len(plan.units) if plan is not None else 0,
        "tokens": stats.tokens,
        "scoring": scoring,
        "bookkeeping": bookkeeping,
        "markers": sum(sec.get(k, 0.0) for k in BOOKKEEPING_KEYS),
        "shard_checks": shard_checks,
        "encode": encode["s"],
        "finalize": finalize_s,
        "total": sec.get("total", 0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rows-per-shard",
        type=int,
        nargs="+",
        default=[16, 64],
        help="unit sizes to measure, in rows (default: 16 64)",
    )
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per row - 1 (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per unit size; the median ratio is shown (default 3)")
    ap.add_argument("--work", type=Path, default=None, help="folder for models and outputs (default: a temp folder)")
    args = ap.parse_args()

    from remit.annotate.demo import make_model_pair, sample_corpus_path

    work = args.work or Path(tempfile.mkdtemp(prefix="remit-bench-bookkeeping-"))
    models = make_model_pair(work / "models")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tiny model pair, sample corpus, hf engine, seq-len {args.seq_len}; load average {load:.1f} at start")
    header = (
        f"{'rows/unit':>9} {'units':>5} {'tokens':>7} {'scoring s':>9} {'bookkeeping s':>13} "
        f"{'(records, base, scan':>20} {'+ shard checks)':>15} {'encode s':>8} {'ratio':>7} {'finalize':>9}"
    )
    print(header)
    for rows in args.rows_per_shard:
        runs = [run_once(models, sample_corpus_path(), work / "out", args.seq_len, rows) for _ in range(args.repeats)]
        for r in runs:
            r["ratio"] = r["bookkeeping"] / r["scoring"]
        mid = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
        print(
            f"{rows:>9} {mid['units']:>5} {mid['tokens']:>7} {mid['scoring']:>9.3f} {mid['bookkeeping']:>13.4f} "
            f"{mid['markers']:>20.4f} {mid['shard_checks']:>15.4f} {mid['encode']:>8.3f} "
            f"{100 * mid['ratio']:>6.2f}% {100 * mid['finalize'] / mid['scoring']:>8.2f}%"
        )
        ratios = [100 * r["ratio"] for r in runs]
        print(
            f"{'':>9} bookkeeping/scoring over {len(runs)} runs: median {statistics.median(ratios):.2f}%, "
            f"min {min(ratios):.2f}%, max {max(ratios):.2f}% (target <= 2%)"
        )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
