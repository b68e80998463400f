"""remit-train's start-up against the number of shards: what rank 0 did before the first step, and what
each rank does now.

- before: the whole validation (`validate_output`: every shard re-read and checked) plus every shard's
  Parquet footer, on rank 0 alone, while every other rank waited;
- now: the manifest and listing checks (`validate_listing`, no shard read) and the dataset's manifest
  checks; each shard is validated by the rank that first reads it (`validate_shard`, timed per shard).

Synthetic outputs of N small shards (default 10, 100, 1000; `rows_per_shard` rows of `seq_len` tokens).
Prints a table and writes JSON (--json). The extrapolation to a 10B-token corpus uses measured rates: the
whole validation scales with tokens (its rate measured on one larger shard, `--rate-rows` rows of
`--rate-seq-len` tokens, where per-shard overheads no longer dominate), the listing with the number of
shards (10B tokens in shards of 2048 rows of 4096 tokens, remit-annotate's default, is 1,192 shards).

    python benchmarks/bench_startup.py [--shards 10 100 1000] [--rows-per-shard 16] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from remit.shards import read_manifest
from remit.shards.synthetic import make_output
from remit.shards.validate import validate_listing, validate_output, validate_shard
from remit.train.dataset import RemitDataset

CORPUS_TOKENS = 10e9
DEFAULT_SHARD_TOKENS = 2048 * 4097


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(root: Path) -> dict[str, float]:
    manifest = read_manifest(root)
    tokens = float(manifest.total_tokens)

    def before() -> None:
        assert not validate_output(root)
        RemitDataset(root, check_footers=True)

    def now() -> None:
        assert not validate_listing(root)
        RemitDataset(root, check_footers=False, validate=True)

    t_before, t_now = _timed(before), _timed(now)
    per_shard = _timed(lambda: [validate_shard(root, manifest, i) for i in range(min(len(manifest.shards), 20))])
    per_shard /= min(len(manifest.shards), 20)
    return {
        "shards": len(manifest.shards),
        "tokens": tokens,
        "before_s": t_before,
        "now_s": t_now,
        "ratio": t_before / max(t_now, 1e-9),
        "validate_tokens_per_s": tokens / t_before,
        "first_read_check_s_per_shard": per_shard,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--rows-per-shard", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rate-rows", type=int, default=256)
    ap.add_argument("--rate-seq-len", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        big_shard = make_output(
            Path(tmp) / "rate",
            n_docs=args.rate_rows * (args.rate_seq_len + 1) // 600 + 1,
            seq_len=args.rate_seq_len,
            rows_per_shard=args.rate_rows,
            doc_len=(200, 1000),
            seed=1,
        )
        rate_manifest = read_manifest(big_shard)
        t_shard = _timed(lambda: validate_shard(big_shard, rate_manifest, 0))
        shard0_tokens = float(rate_manifest.shards[0].get("tokens") or args.rate_rows * (args.rate_seq_len + 1))
        token_rate = shard0_tokens / t_shard
        for n in args.shards:
            rows = n * args.rows_per_shard
            avg_doc = 76  # make_output's documents are 3 to 150 tokens long
            root = make_output(
                Path(tmp) / f"out-{n}",
                n_docs=rows * (args.seq_len + 1) // avg_doc + 1,
                seq_len=args.seq_len,
                rows_per_shard=args.rows_per_shard,
                seed=n,
            )
            results.append(measure(root))
    big = results[-1]
    shards_10b = round(CORPUS_TOKENS / DEFAULT_SHARD_TOKENS)
    listing_per_shard = big["now_s"] / big["shards"]
    print("| shards | tokens | start-up before (rank 0 validates all) | start-up now | ratio |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['shards']:,} | {int(r['tokens']):,} | {r['before_s']:.2f} s | {r['now_s']:.3f} s | {r['ratio']:.0f}x |"
        )
    print()
    print(
        f"whole validation: {token_rate / 1e6:.2f} M tokens/s on one rank (one {args.rate_rows}-row shard of "
        f"{args.rate_seq_len} tokens) -> a 10B-token corpus: {CORPUS_TOKENS / token_rate / 3600:.1f} h on rank 0 "
        "before the first step (before)"
    )
    print(
        f"start-up now: {listing_per_shard * 1e3:.2f} ms per shard -> {shards_10b:,} shards of 2048 x 4096 tokens: "
        f"{listing_per_shard * shards_10b:.1f} s; each shard's checks move to its first read "
        f"({big['first_read_check_s_per_shard'] * 1e3:.1f} ms per {args.rows_per_shard}-row shard here, spread over the ranks)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"results": results, "shards_10b": shards_10b, "validate_tokens_per_s": token_rate}, indent=2)
        )


if __name__ == "__main__":
    main()
