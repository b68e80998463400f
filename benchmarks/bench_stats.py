"""`remit-annotate stats` on synthetic outputs of several sizes: wall time and peak memory.

Builds (once, cached under --work) outputs with 4k-token rows and 2048 rows per shard, the annotator's
defaults, holding about 10M and 40M tokens. Each measurement runs `stats` in a fresh child process and
reads the child's peak resident memory from the kernel (wait4), so it counts everything DuckDB allocates,
tracked by its buffer manager or not. A child that only imports remit, DuckDB and pyarrow gives the
baseline; peak minus baseline is what the queries cost. Target: under 10 s for 10M tokens, and a peak that
does not grow with the output.

    .venv/bin/python benchmarks/bench_stats.py [--sizes 10,40] [--threads 2] [--memory-limit 1GB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 4096
#: Mean document length of the generated corpus (uniform between 50 and ~4k tokens).
DOC_LEN = (50, 4000)


def build(work: Path, million_tokens: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from remit.shards.synthetic import make_output

    out = work / f"out-{million_tokens}M"
    if (out / "manifest.json").exists():
        return out
    n_docs = int(million_tokens * 1e6 / (sum(DOC_LEN) / 2))
    t0 = time.perf_counter()
    make_output(
        out, n_docs=n_docs, seq_len=SEQ_LEN, vocab=128_000, doc_len=DOC_LEN, rows_per_shard=2048, seed=million_tokens
    )
    print(f"built {out} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out


def measure(code: str) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MiB, stdout, CPU seconds) of `python -c code` in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def stats_code(output: Path, threads: int | None, memory_limit: str | None) -> str:
    argv = [str(output), "--json"]
    if threads:
        argv += ["--threads", str(threads)]
    if memory_limit:
        argv += ["--memory-limit", memory_limit]
    return (
        "import argparse, contextlib, io, sys, time\n"
        "from remit.annotate.inspect import stats\n"
        "p = argparse.ArgumentParser(); stats.add_arguments(p)\n"
        f"args = p.parse_args({argv!r})\n"
        "t0 = time.perf_counter()\n"
        "with contextlib.redirect_stdout(io.StringIO()): rc = stats.run(args)\n"
        "print(time.perf_counter() - t0)\n"
        "sys.exit(rc)\n"
    )


BASELINE = "import duckdb, pyarrow, numpy, remit.shards.views, remit.annotate.inspect.stats; print(0)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/remit-bench-stats"), help="cache for the outputs")
    ap.add_argument("--sizes", default="10,40", help="output sizes in millions of tokens (default 10,40)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    ap.add_argument("--memory-limit", default=None, help="DuckDB memory limit (default: DuckDB's)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the best time is reported (default 3)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    _, base_rss, _, _ = measure(BASELINE)
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        out = build(args.work, size)
        manifest = json.loads((out / "manifest.json").read_text())
        runs = [measure(stats_code(out, args.threads, args.memory_limit)) for _ in range(args.repeat)]
        results.append(
            {
                "tokens": manifest["totals"]["tokens"],
                "rows": manifest["totals"]["rows"],
                "shards": manifest["totals"]["shards"],
                "bytes_on_disk": manifest["totals"]["bytes"],
                "stats_seconds_best": min(float(r[2]) for r in runs),
                "process_seconds_best": min(r[0] for r in runs),
                "process_cpu_seconds_best": min(r[3] for r in runs),
                "peak_rss_mib_max": max(r[1] for r in runs),
                "peak_rss_above_baseline_mib": max(r[1] for r in runs) - base_rss,
            }
        )
    report = {
        "cpu_cores": os.cpu_count(),
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "baseline_rss_mib": base_rss,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    print(
        f"\n| tokens | on disk | stats wall time (best of {args.repeat}) | process CPU time | peak RSS "
        "| above import baseline |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['tokens'] / 1e6:.1f}M | {r['bytes_on_disk'] / 2**20:.0f} MiB | {r['stats_seconds_best']:.2f} s "
            f"| {r['process_cpu_seconds_best']:.2f} s | {r['peak_rss_mib_max']:.0f} MiB "
            f"| {r['peak_rss_above_baseline_mib']:.0f} MiB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
