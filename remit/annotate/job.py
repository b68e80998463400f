"""One worker's job as the commands run it: score, finalize when it is the only worker, print the summary.

- `run_job`: used by the one-shot command, `run` and `repair`.
- `print_summary`: documents, tokens, rows, shards, skipped records, files not read, speed and time.
- Units left to another live worker (`remit.annotate.lease`) end the job with an error that names them
  and says when to finalize, instead of a manifest.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from remit.annotate.config import AnnotateConfig


class UnitsBusy(ValueError):
    """Units of this job are held by another live worker."""


def print_summary(manifest: dict[str, Any] | None, stats: Any, seconds: float) -> None:
    lines = []
    if manifest is not None:
        inp = manifest["input"]
        lines += [
            f"documents  {inp['documents']:>14,}",
            f"tokens     {manifest['totals']['tokens']:>14,}",
            f"rows       {manifest['totals']['rows']:>14,}  (last row: {inp['last_row_tokens']} tokens)",
            f"shards     {manifest['totals']['shards']:>14,}  ({manifest['totals']['bytes'] / 1e6:.1f} MB, "
            f"{manifest['totals']['bytes'] / max(1, manifest['totals']['tokens']):.2f} bytes/token)",
            f"passes     {manifest.get('passes', 'both'):>14}",
        ]
        skipped = inp.get("skipped") or {}
        lines.append(
            f"skipped    {sum(skipped.values()):>14,}  "
            + (", ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else "")
        )
        for ex in inp.get("skip_examples", [])[:5]:
            lines.append(f"             e.g. {ex}")
        if inp.get("ignored_files"):
            lines.append(f"not read   {inp['ignored_files']:>14,}  files in input folders that are no input type")
            for ex in inp.get("ignored_examples", [])[:5]:
                lines.append(f"             e.g. {ex}")
    lines.append(
        f"scored     {stats.tokens:>14,} tokens in {stats.units_scored} units "
        f"({stats.units_skipped} already done, {stats.units_rescored} redone from scratch)"
    )
    score_s = stats.seconds.get("score_base", 0.0) + stats.seconds.get("score_rl", 0.0)
    model_tokens = stats.tokens_base + stats.tokens_rl
    if stats.tokens and seconds > 0:
        lines.append(
            f"speed      {stats.tokens / seconds:>14,.0f} tokens/s end to end "
            f"({model_tokens / max(score_s, 1e-9):,.0f} tokens/s per model pass)"
        )
        lines.append(
            f"time       {seconds:>14.1f} s; scoring passes {100 * score_s / seconds:.1f}%, "
            + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(stats.seconds.items()) if k != "total")
        )
    print("\n".join(lines), flush=True)


def run_job(cfg: AnnotateConfig, rank: int, world: int, deep: bool = False) -> int:
    """Score this rank's units; finalize when this is the only worker. `deep`: check a finished output's
    shards as `validate` does, and score again those that fail (`remit-annotate repair`)."""
    from remit.annotate.finalize import finalize, finish_left_over
    from remit.annotate.workdir import WorkDir
    from remit.annotate.worker import run_worker
    from remit.shards.manifest import read_manifest

    t0 = time.perf_counter()
    work = WorkDir(cfg.output)  # the job's one view of its folder, handed to every step
    stats, plan = run_worker(cfg, rank, world, work, deep=deep)
    if stats.busy:
        print_summary(None, stats, time.perf_counter() - t0)
        raise UnitsBusy(
            f"{len(stats.busy)} units are being scored by another live worker ({stats.busy[0]}). Two workers on one "
            f"unit means an earlier job is still running: let it finish (then `remit-annotate finalize "
            f"{cfg.output}`), or stop it and run this command again; the lease of a worker that is gone is taken "
            "over."
        )
    if plan is None:  # complete already, every shard checked against the manifest
        manifest: dict[str, Any] | None = read_manifest(cfg.output).data
        finish_left_over(work, cfg.keep_work)
    else:
        manifest = finalize(work, keep_work=cfg.keep_work) if world == 1 else None
    print_summary(manifest, stats, time.perf_counter() - t0)
    if manifest is None:
        print(
            f"rank {rank}/{world} done; when all ranks are done: remit-annotate finalize {shlex.quote(str(cfg.output))}"
        )
    return 0


__all__ = ["UnitsBusy", "print_summary", "run_job"]
