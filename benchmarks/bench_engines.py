"""Scoring throughput of the two engines on the same corpus and the same ~50M-parameter model.

    .venv/bin/python benchmarks/bench_engines.py [--sequences 128] [--seq-len 1024] [--dtypes float32 bfloat16]

For each dtype, each engine scores the same token ids in its own subprocess (so that each one's peak RSS
is its own, and so that vLLM's process-wide thread binding cannot change the HF run). The model is a
random Llama (hidden 512, 6 layers, 8 heads, FFN 1536, vocabulary 32000: 53M parameters) built once in
--workdir; scoring works from token ids, so no tokenizer is needed. Timings cover scoring only, after a
short warm-up; load times are printed beside them. The script also prints how far each run's log-probs
are from the HF float32 ones, and the machine's load: other processes on shared cores slow both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENGINES = ("hf", "vllm")
WARMUP_SEQUENCES = 4


# -- the measured process -----------------------------------------------------------------------------


def cpu_busy_jiffies() -> int | None:
    """Busy CPU time of the whole machine (all processes), from /proc/stat; None where there is none."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(args: argparse.Namespace) -> None:
    from remit.annotate.engines import EngineSettings, open_scorer

    ids = np.load(args.corpus)
    prompts = list(ids)
    settings = EngineSettings(dtype=args.dtype, max_model_len=ids.shape[1], max_batch_tokens=args.max_batch_tokens)
    start = time.perf_counter()
    scorer = open_scorer(args.worker, args.model, settings)
    load_s = time.perf_counter() - start
    scorer.score(prompts[:WARMUP_SEQUENCES])

    tick = os.sysconf("SC_CLK_TCK")
    busy0, own0 = cpu_busy_jiffies(), own_cpu_seconds()
    start = time.perf_counter()
    scores = scorer.score(prompts)
    seconds = time.perf_counter() - start
    busy1, own1 = cpu_busy_jiffies(), own_cpu_seconds()
    foreign = None
    if busy0 is not None and busy1 is not None:
        # CPU time spent by other processes while we scored, as a share of the machine's capacity.
        foreign = max(0.0, ((busy1 - busy0) / tick - (own1 - own0)) / (seconds * (os.cpu_count() or 1)))
    describe = scorer.describe()
    scorer.close()
    np.save(args.result, np.stack([s[1:] for s in scores]))
    print(
        json.dumps(
            {
                "engine": args.worker,
                "dtype": args.dtype,
                "tokens": int(ids.size),
                "seconds": seconds,
                "load_seconds": load_s,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "foreign_cpu_share": foreign,
                "settings": describe["settings"],
            }
        )
    )


# -- the driver ---------------------------------------------------------------------------------------


def build_model(workdir: Path, vocab: int) -> Path:
    """The ~50M random Llama, written once and reused."""
    model_dir = workdir / f"llama-53m-v{vocab}"
    if not (model_dir / "config.json").exists():
        from remit.annotate.demo import tiny_llama

        model = tiny_llama(vocab, seed=1, hidden=512, layers=6, heads=8, kv_heads=8, ffn=1536, max_positions=4096)
        model.save_pretrained(model_dir)
        n = sum(p.numel() for p in model.parameters())
        print(f"built {model_dir} ({n / 1e6:.1f}M parameters)")
    return model_dir


def build_corpus(workdir: Path, sequences: int, seq_len: int, vocab: int, seed: int) -> Path:
    """Token ids drawn from a Zipf-like law over the vocabulary, so that frequent ids dominate as in text."""
    path = workdir / f"corpus-{sequences}x{seq_len}-v{vocab}-s{seed}.npy"
    if not path.exists():
        rng = np.random.default_rng(seed)
        ranks = np.arange(1, vocab + 1, dtype=np.float64)
        p = 1.0 / ranks
        ids = rng.choice(vocab, size=(sequences, seq_len), p=p / p.sum()).astype(np.int32)
        np.save(path, ids)
    return path


def run_worker(engine: str, dtype: str, model: Path, corpus: Path, result: Path, max_batch_tokens: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--dtype-one",
        dtype,
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--result",
        str(result),
        "--max-batch-tokens",
        str(max_batch_tokens),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{engine} {dtype} worker failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # -- workload
    parser.add_argument("--sequences", type=int, default=128, help="prompts in the corpus (default 128)")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per prompt (default 1024)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size of the model (default 32000)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="dtypes to run, in order")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds; each round runs every engine once per dtype, the engine order "
        "alternating between rounds so that a load drift hits both (default 1)",
    )
    parser.add_argument("--max-batch-tokens", type=int, default=0, help="EngineSettings.max_batch_tokens (0 = auto)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/remit-bench"),
        help="where the model and corpus are built and reused (default /tmp/remit-bench)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus (default 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    # -- internal: one measured run
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--dtype-one", dest="dtype", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = build_model(args.workdir, args.vocab)
    corpus = build_corpus(args.workdir, args.sequences, args.seq_len, args.vocab, args.seed)
    print(
        f"corpus: {args.sequences} x {args.seq_len} tokens; {os.cpu_count()} CPUs; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    runs: list[dict] = []
    reference: np.ndarray | None = None
    for round_ in range(args.repeats):
        for dtype in args.dtypes:
            order = ENGINES if round_ % 2 == 0 else ENGINES[::-1]
            for engine in order:
                result_path = args.workdir / f"scores-{engine}-{dtype}.npy"
                r = run_worker(engine, dtype, model, corpus, result_path, args.max_batch_tokens)
                scores = np.load(result_path)
                if engine == "hf" and dtype == "float32" and reference is None:
                    reference = scores
                if reference is not None:
                    r["max_abs_diff_vs_hf_fp32"] = float(np.max(np.abs(scores - reference)))
                    r["mean_abs_diff_vs_hf_fp32"] = float(np.mean(np.abs(scores - reference)))
                r["round"] = round_
                r["tok_per_s"] = r["tokens"] / r["seconds"]
                r["load_average_after"] = os.getloadavg()
                runs.append(r)
                foreign = "n/a" if r["foreign_cpu_share"] is None else f"{100 * r['foreign_cpu_share']:.0f}%"
                print(
                    f"  round {round_} {engine:>4} {dtype:<8} {r['tok_per_s']:>8,.0f} tok/s  "
                    f"scoring {r['seconds']:6.1f} s  load {r['load_seconds']:5.1f} s  "
                    f"peak RSS {gib(r['peak_rss_bytes'])}  foreign CPU {foreign}  "
                    f"max|diff| vs HF fp32 {r.get('max_abs_diff_vs_hf_fp32', float('nan')):.1e}",
                    flush=True,
                )

    print(
        "\n| dtype | HF tok/s | vLLM tok/s | vLLM / HF | HF peak RSS | vLLM peak RSS | max abs diff vs HF fp32 (vLLM) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for dtype in args.dtypes:
        by = {e: [r for r in runs if r["engine"] == e and r["dtype"] == dtype] for e in ENGINES}
        # Ratios per round (the two engines of a round ran back to back), then their median.
        ratios = [v["tok_per_s"] / h["tok_per_s"] for h, v in zip(by["hf"], by["vllm"])]
        hf_rate = float(np.median([r["tok_per_s"] for r in by["hf"]]))
        vllm_rate = float(np.median([r["tok_per_s"] for r in by["vllm"]]))
        ratio = float(np.median(ratios))
        diff = max(r.get("max_abs_diff_vs_hf_fp32", float("nan")) for r in by["vllm"])
        print(
            f"| {dtype} | {hf_rate:,.0f} | {vllm_rate:,.0f} | {ratio:.2f}x | "
            f"{gib(max(r['peak_rss_bytes'] for r in by['hf']))} | {gib(max(r['peak_rss_bytes'] for r in by['vllm']))} "
            f"| {diff:.1e} |"
        )
        summary.append(
            {"dtype": dtype, "hf_tok_per_s": hf_rate, "vllm_tok_per_s": vllm_rate, "ratio": ratio, "ratios": ratios}
        )
    vllm_settings = next(r["settings"] for r in runs if r["engine"] == "vllm")
    print(f"\nvLLM settings: {json.dumps(vllm_settings, sort_keys=True)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
