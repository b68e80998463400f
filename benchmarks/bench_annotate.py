"""The whole `remit-annotate` command on a ~50M-parameter model pair: where the time goes, and bytes on disk.

Builds (once, cached under --work) a byte-level BPE tokenizer with a 32k vocabulary trained on the
Python standard library's source, a random Llama of ~53M parameters (hidden 512, 6 layers) and its
perturbed "RL" sibling. The corpus is standard-library source files as documents. Then it runs the
one-shot command in-process and prints:

- the share of wall time spent inside the two scoring passes (target >= 90%), both counting only the
  engine's score() calls and counting model loading as part of the passes;
- bytes per token on disk, total and per column (target <= 10 for ids, two log-probs and the weight);
- end-to-end tokens per second.

With ``--compare-score`` it instead runs the same job twice in one process, with ``--score both`` and
with ``--score rl`` (the RL pass only, what `online` training needs), and prints the ratio of their
wall times: the saving of an RL-only annotation.

    .venv/bin/python benchmarks/bench_annotate.py [--engine vllm] [--tokens 200000] [--compare-score]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import pyarrow.parquet as pq


def stdlib_docs(limit_chars: int) -> list[dict]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for p in sorted(lib.glob("*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        docs.append({"id": p.name, "text": text})
        total += len(text)
        if total >= limit_chars:
            break
    return docs


def build_models(work: Path) -> tuple[Path, Path]:
    from remit.annotate.demo import perturb, tiny_llama, train_tokenizer

    base, rl = work / "med-base", work / "med-rl"
    if (rl / "config.json").exists():
        return base, rl
    texts = [d["text"] for d in stdlib_docs(8_000_000)]
    tok = train_tokenizer(texts, vocab_size=32000)
    model = tiny_llama(len(tok), seed=1, hidden=512, layers=6, heads=8, kv_heads=8, ffn=1536)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    perturb(model, seed=2, scale=0.3)
    model.save_pretrained(rl)
    tok.save_pretrained(rl)
    return base, rl


def column_bytes(output: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for f in sorted(output.glob("*.parquet")):
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                name = col.path_in_schema.split(".")[0]
                sizes[name] = sizes.get(name, 0) + col.total_compressed_size
    return sizes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tokens", type=int, default=200_000, help="approximate corpus size in tokens")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--work", type=Path, default=Path("/tmp/remit-bench-annotate"))
    p.add_argument("--compare-score", action="store_true", help="time --score both against --score rl")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    base, rl = build_models(args.work)
    print(f"models ready ({time.perf_counter() - t:.1f} s): {base}, {rl}")
    corpus = args.work / "corpus.jsonl"
    with open(corpus, "w") as f:
        for d in stdlib_docs(args.tokens * 3):  # ~3 characters per token for this tokenizer on code
            f.write(json.dumps(d) + "\n")
    out = args.work / f"out-{args.engine}-{args.dtype}"
    shutil.rmtree(out, ignore_errors=True)

    from remit.annotate.config import AnnotateConfig
    from remit.annotate.finalize import finalize
    from remit.annotate.worker import run_worker

    def config(output: Path, score: str = "both") -> AnnotateConfig:
        return AnnotateConfig(
            base=base,
            rl=rl,
            inputs=[corpus],
            output=output,
            engine=args.engine,
            dtype=args.dtype,
            seq_len=args.seq_len,
            rows_per_shard=64,
            progress_every_s=30,
            score=score,  # type: ignore[arg-type]
        )

    if args.compare_score:
        return compare_score(config, out, finalize, run_worker)
    cfg = config(out)
    t0 = time.perf_counter()
    stats, _ = run_worker(cfg)
    manifest = finalize(out)
    wall = time.perf_counter() - t0
    s = stats.seconds
    scoring = s.get("score_base", 0) + s.get("score_rl", 0)
    passes = scoring + s.get("load_base", 0) + s.get("load_rl", 0)
    tokens = manifest["totals"]["tokens"]
    sizes = column_bytes(out)
    total_bytes = manifest["totals"]["bytes"]
    core = sum(sizes[c] for c in ("token_ids", "logp_base", "logp_rl", "weight"))
    print(f"\nmachine load average at end: {os.getloadavg()}")
    print(f"engine {args.engine} {args.dtype}: {tokens:,} tokens, {manifest['totals']['rows']} rows, wall {wall:.1f} s")
    print("time split: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(s.items()) if k != "total"))
    print(
        f"share of wall time in the two scoring passes: {100 * scoring / wall:.1f}% (score() calls only), "
        f"{100 * passes / wall:.1f}% (with model loading)   [target >= 90%]"
    )
    print(f"end to end: {tokens / wall:,.0f} tokens/s; per model pass: {2 * tokens / scoring:,.0f} tokens/s")
    print(
        f"bytes per token on disk: {total_bytes / tokens:.2f} total; {core / tokens:.2f} for ids + two log-probs "
        f"+ weight   [target <= 10]"
    )
    for name, b in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<26} {b / tokens:6.2f} B/token")
    return 0


def compare_score(config, out: Path, finalize, run_worker) -> int:
    """Wall time of the same job with both passes and with the RL pass only, in this process."""
    from remit.annotate.engines import open_scorer
    from remit.annotate.models import model_info

    cfg = config(out)
    for model in (cfg.base, cfg.rl):
        model_info(model)  # hash the weights once, outside the timings: both runs then read the cache
    # Start the engine once outside the timings: the first start in a process pays the imports and the
    # engine's one-time set-up, which would otherwise be charged to whichever run comes first.
    open_scorer(cfg.engine, cfg.base, cfg.engine_settings()).close()
    walls: dict[str, float] = {}
    scoring: dict[str, float] = {}
    for score in ("both", "rl"):
        folder = out.with_name(f"{out.name}-{score}")
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        stats, _ = run_worker(config(folder, score))
        manifest = finalize(folder)
        walls[score] = time.perf_counter() - t0
        scoring[score] = stats.seconds.get("score_base", 0.0) + stats.seconds.get("score_rl", 0.0)
        print(
            f"--score {score}: {manifest['totals']['tokens']:,} tokens, passes {manifest['passes']}, wall "
            f"{walls[score]:.1f} s; " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stats.seconds.items()))
        )
    print(f"\nmachine load average at end: {os.getloadavg()}")
    print(
        f"scoring passes (score() calls) both / rl: {scoring['both'] / scoring['rl']:.2f}x; "
        f"wall time --score both / --score rl: {walls['both'] / walls['rl']:.2f}x "
        f"(the RL-only annotation takes {100 * walls['rl'] / walls['both']:.0f}% of the two-pass one)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
