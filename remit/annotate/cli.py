"""`remit-annotate`: score a corpus with a base and an RL model and write ReMiT weights to Parquet shards.

    remit-annotate --base DIR --rl DIR --input PATH [PATH ...] --output DIR     one shot: plan, score, finalize
    remit-annotate run ... [--rank R --world-size W]                           one worker of many
    remit-annotate plan | finalize | validate | verify | stats | show ...
    remit-annotate pack --tokenizer DIR --input PATH --output DIR               token ids only, no scoring

The CLI only parses flags, builds one config and calls one library function. `--help` loads no
engine: heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from remit import __version__

SUBCOMMANDS = ("run", "plan", "finalize", "launch", "validate", "verify", "stats", "show", "pack")
_EPILOG = """commands:
  (none)     one shot: plan, score with both models, finalize (the flags above)
  run        score this worker's share of the units (same flags + --rank/--world-size)
  plan       only tokenize and pack the corpus into units (same flags)
  finalize   check all units and write manifest.json
  launch     run N local worker processes, then finalize
  validate   re-read every shard and check it against the manifest
  verify     re-score a sample of rows with the hf engine and report the differences
  stats      weight statistics (DuckDB over the shards)
  show       an HTML page of tokens coloured by weight
  pack       token ids in sequence-aligned shards without scoring (for `remit-train --weights none`)
Run `remit-annotate COMMAND --help` for a command's flags."""


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    # --- models and data ---
    g = p.add_argument_group("models and data")
    g.add_argument("--base", required=True, type=Path, help="base checkpoint folder (Hugging Face format)")
    g.add_argument("--rl", required=True, type=Path, help="RL-tuned sibling of --base (same tokenizer)")
    g.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        dest="inputs",
        help="corpus: .jsonl/.jsonl.gz, .parquet, folders of .txt, or `datasets` save_to_disk folders",
    )
    g.add_argument("--output", required=True, type=Path, help="output folder (manifest.json + shard-*.parquet)")
    g.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    g.add_argument(
        "--id-field", default="id", help="field holding the document id (default: id; absent: '<file>:<record>')"
    )
    g.add_argument(
        "--token-field", default=None, help="pre-tokenized input: field with token ids, used as they are (default: off)"
    )
    g.add_argument("--strict", action="store_true", help="fail on the first unusable record instead of skipping it")
    # --- packing and weights ---
    g = p.add_argument_group("packing and weights")
    g.add_argument(
        "--seq-len", type=int, default=4096, help="training sequence length in tokens; rows hold seq-len + 1"
    )
    g.add_argument("--eps", type=float, default=0.2, help="clip half-width: weights in [1-eps, 1+eps] (default 0.2)")
    g.add_argument(
        "--center",
        choices=("row", "segment"),
        default="row",
        help="centre the log-prob difference per row (training sequence) or per document segment",
    )
    g.add_argument(
        "--bos",
        choices=("auto", "always", "never"),
        default="auto",
        help="prepend BOS to each document (auto: as the tokenizer's template does)",
    )
    g.add_argument("--eos", choices=("always", "never"), default="always", help="append EOS to each document")
    g.add_argument(
        "--rows-per-shard", type=int, default=2048, help="rows per shard = the unit of work and resume (default 2048)"
    )
    # --- engine ---
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="scoring engine (default vllm)")
    g.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="scoring dtype for both models (default float32: bf16 errors exceed the weight's range)",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=0,
        help="tokens per engine step; bounds the [tokens x vocab] log-softmax (0 = from vocab size)",
    )
    g.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM KV cache on CPU, GiB (default 1)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM on GPU (default 0.85)")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallel size (default 1)")
    # --- run ---
    g = p.add_argument_group("run")
    g.add_argument("--keep-work", action="store_true", help="keep _work/ (planned units, records) after finalize")
    g.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines (default 10)")


def config_from_args(args: argparse.Namespace):
    from remit.annotate.config import AnnotateConfig

    return AnnotateConfig(
        base=args.base,
        rl=args.rl,
        inputs=args.inputs,
        output=args.output,
        engine=args.engine,
        seq_len=args.seq_len,
        eps=args.eps,
        center=args.center,
        dtype=args.dtype,
        text_field=args.text_field,
        id_field=args.id_field,
        token_field=args.token_field,
        rows_per_shard=args.rows_per_shard,
        bos=args.bos,
        eos=args.eos,
        strict=args.strict,
        max_batch_tokens=args.max_batch_tokens,
        kv_cache_gib=args.kv_cache_gib,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        keep_work=args.keep_work,
        progress_every_s=args.progress_every,
    )


def _print_summary(manifest: dict | None, stats, seconds: float) -> None:
    lines = []
    if manifest is not None:
        inp = manifest["input"]
        lines += [
            f"documents  {inp['documents']:>14,}",
            f"tokens     {manifest['totals']['tokens']:>14,}",
            f"rows       {manifest['totals']['rows']:>14,}  (last row: {inp['last_row_tokens']} tokens)",
            f"shards     {manifest['totals']['shards']:>14,}  ({manifest['totals']['bytes'] / 1e6:.1f} MB, "
            f"{manifest['totals']['bytes'] / max(1, manifest['totals']['tokens']):.2f} bytes/token)",
        ]
        skipped = inp.get("skipped") or {}
        lines.append(
            f"skipped    {sum(skipped.values()):>14,}  "
            + (", ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else "")
        )
        for ex in inp.get("skip_examples", [])[:5]:
            lines.append(f"             e.g. {ex}")
    lines.append(
        f"scored     {stats.tokens:>14,} tokens in {stats.units_scored} units "
        f"({stats.units_skipped} already done, {stats.units_rescored} redone from scratch)"
    )
    score_s = stats.seconds.get("score_base", 0.0) + stats.seconds.get("score_rl", 0.0)
    if stats.tokens and seconds > 0:
        lines.append(
            f"speed      {stats.tokens / seconds:>14,.0f} tokens/s end to end "
            f"({2 * stats.tokens / max(score_s, 1e-9):,.0f} tokens/s per model pass)"
        )
        lines.append(
            f"time       {seconds:>14.1f} s; scoring passes {100 * score_s / seconds:.1f}%, "
            + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stats.seconds.items()) if k != "total")
        )
    print("\n".join(lines), flush=True)


def cmd_job(args: argparse.Namespace, mode: str) -> int:
    from remit.annotate.finalize import finalize
    from remit.annotate.plan import describe_run
    from remit.annotate.worker import ensure_plan, prepare_output, rank_from_env, run_worker

    cfg = config_from_args(args)
    t0 = time.perf_counter()
    if mode == "plan":
        run, tokenizer, special = describe_run(cfg)
        if not prepare_output(cfg, run):
            plan = ensure_plan(cfg, run, tokenizer, special, rank=0)
            print(json.dumps(plan["totals"], indent=2))
        return 0
    rank, world = (0, 1) if mode == "oneshot" else rank_from_env(args.rank, args.world_size)
    stats, _ = run_worker(cfg, rank, world)
    manifest = None
    if mode == "oneshot" or world == 1:
        manifest = finalize(cfg.output, keep_work=cfg.keep_work)
    _print_summary(manifest, stats, time.perf_counter() - t0)
    if manifest is None:
        print(f"rank {rank}/{world} done; when all ranks are done: remit-annotate finalize {cfg.output}")
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from remit.annotate.finalize import finalize

    manifest = finalize(args.output, keep_work=args.keep_work)
    t = manifest["totals"]
    print(f"{args.output}: {t['shards']} shards, {t['rows']:,} rows, {t['tokens']:,} tokens; manifest.json written")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from remit.shards.validate import validate_output

    problems = validate_output(args.output)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{args.output}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.output}: valid")
    return 0


def build_parser(command: str | None) -> argparse.ArgumentParser:
    prog = "remit-annotate" + (f" {command}" if command else "")
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG if command is None else None,
    )
    if command is None:
        p.add_argument("--version", action="version", version=f"remit {__version__}")
    if command in (None, "run", "plan"):
        add_job_arguments(p)
    if command == "run":
        g = p.add_argument_group("workers")
        g.add_argument(
            "--rank",
            type=int,
            default=None,
            help="this worker's rank (default: from SLURM_ARRAY_TASK_ID, SLURM_PROCID or RANK; else 0)",
        )
        g.add_argument(
            "--world-size",
            type=int,
            default=None,
            help="number of workers (default: from SLURM_ARRAY_TASK_COUNT, SLURM_NTASKS or WORLD_SIZE; else 1)",
        )
    if command in ("finalize", "validate"):
        p.add_argument("output", type=Path, help="annotation output folder")
    if command == "finalize":
        p.add_argument("--keep-work", action="store_true", help="keep _work/ after writing the manifest")
    if command in ("launch", "verify", "stats", "show", "pack"):
        import importlib

        importlib.import_module(f"remit.annotate.{command}").add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = build_parser(command).parse_args(argv[1:] if command else argv)
    from remit.annotate.inputs import InputError
    from remit.annotate.plan import StrictInputError
    from remit.annotate.tokenize import TokenizerMismatch
    from remit.shards.manifest import ShardError

    try:
        if command in (None, "run", "plan"):
            return cmd_job(args, {None: "oneshot", "run": "run", "plan": "plan"}[command])
        if command == "finalize":
            return cmd_finalize(args)
        if command == "validate":
            return cmd_validate(args)
        import importlib

        return importlib.import_module(f"remit.annotate.{command}").run(args)
    except (
        TokenizerMismatch,
        InputError,
        StrictInputError,
        ShardError,
        ValueError,
        TimeoutError,
        ImportError,
        RuntimeError,
        FileNotFoundError,
    ) as e:
        if os.environ.get("REMIT_DEBUG"):
            raise
        print(f"remit-annotate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
