"""Finalize: check every unit is complete and consistent, then write manifest.json (last).

Checks: every planned unit has a completion record of this run that agrees with the plan (rows,
tokens, first sample id, token checksum); its shard exists and hashes to the recorded sha256; all
units were scored with the same engine, version, dtype and settings, and each unit's base pass with
the same as its RL pass; sample ids are contiguous from 0.

Everything wrong is reported at once. A unit whose shard is missing or does not match its record
loses the record, so that the printed resume command (any number of workers) scores it again; a
unit without a record is simply listed. Nothing is written until every unit checks out, and the
manifest is written last, so an output with a manifest is complete.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from remit.annotate.config import AnnotateConfig
from remit.annotate.plan import PLAN_FILE, RUN_FILE, read_plan, work_dir
from remit.annotate.worker import done_path, trusted_record
from remit.shards.atomic import write_json_atomic
from remit.shards.checksum import file_sha256
from remit.shards.manifest import MANIFEST_NAME, ShardError, assemble_manifest, read_manifest

_SHARD_KEYS = ("file", "rows", "tokens", "first_sample_id", "token_checksum", "file_sha256", "bytes")
_SHOWN = 20

# Config fields -> flags, for the resume command. Every field in the run identity must be here: a resume
# command that leaves one out at a non-default value would describe another run and be refused.
_FLAGS = {
    "engine": "--engine",
    "seq_len": "--seq-len",
    "eps": "--eps",
    "center": "--center",
    "dtype": "--dtype",
    "rows_per_shard": "--rows-per-shard",
    "bos": "--bos",
    "eos": "--eos",
    "text_field": "--text-field",
    "id_field": "--id-field",
    "token_field": "--token-field",
    "max_batch_tokens": "--max-batch-tokens",
    "kv_cache_gib": "--kv-cache-gib",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "tensor_parallel_size": "--tensor-parallel-size",
}


class IncompleteOutput(ShardError):
    pass


def resume_command(config: dict[str, Any], output: Path, command: str = "run") -> str:
    """The command line that continues this run (`run`: one worker, which also finalizes; any
    --rank/--world-size split, `launch` or the Slurm array take the same flags)."""
    defaults = {f.name: f.default for f in fields(AnnotateConfig)}
    args = [
        "remit-annotate",
        command,
        "--base",
        config["base"],
        "--rl",
        config["rl"],
        "--input",
        *config["inputs"],
        "--output",
        str(output),
    ]
    for key, flag in _FLAGS.items():
        value = config.get(key, defaults[key])
        # The job-shape flags are always shown (they say what the run is); the rest only when changed.
        if value is not None and (value != defaults[key] or key in ("engine", "seq_len", "rows_per_shard")):
            args += [flag, str(value)]
    return shlex.join(args)


def _shown(units: list[int]) -> str:
    return ", ".join(map(str, units[:_SHOWN])) + (f" ... ({len(units)} in all)" if len(units) > _SHOWN else "")


def check_units(
    out: Path, run: dict[str, Any], plan: dict[str, Any]
) -> tuple[list[dict], list[str], list[int], dict[str, Any] | None]:
    """Check every planned unit. Returns the shard entries in unit order, the problems, the units to score
    again, and the engine set-up (when all units agree on one).

    A unit whose record cannot be trusted loses it here (see the module docstring).
    """
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    missing: list[int] = []
    invalid: list[tuple[int, str]] = []
    engines: dict[str, list[int]] = {}
    next_sample = 0
    for u in plan["units"]:
        n = u["unit"]
        if u["first_sample_id"] != next_sample:
            problems.append(
                f"{work_dir(out) / PLAN_FILE}: unit {n} starts at sample id {u['first_sample_id']}, "
                f"expected {next_sample}; delete {work_dir(out)} and run again"
            )
        next_sample = u["first_sample_id"] + u["rows"]
        record, why = trusted_record(out, u, run["run_id"])
        if record is not None and file_sha256(out / record["file"]) != record["file_sha256"]:
            record, why = None, f"its shard {record['file']} differs from what was written (sha256 mismatch)"
        if record is None:
            if why:
                invalid.append((n, why))
                done_path(out, n).unlink(missing_ok=True)
            else:
                missing.append(n)
            continue
        if record.get("engine") != record.get("engine_base"):
            problems.append(
                f"{done_path(out, n)}: the base pass used {record.get('engine_base')}, the RL pass "
                f"{record.get('engine')}; delete this record and run again to re-score the unit"
            )
        engines.setdefault(json.dumps(record.get("engine"), sort_keys=True), []).append(n)
        entries.append({k: record[k] for k in _SHARD_KEYS})
    if len(engines) > 1:
        groups = "; ".join(f"units {_shown(units)} with {setup}" for setup, units in engines.items())
        problems.append(
            f"{out}: units were scored with different engine set-ups ({groups}). Weights from different engines, "
            f"versions or settings are not comparable: delete {work_dir(out) / 'done'}/unit-N.json of the units "
            "whose set-up you do not want and run again with the other one."
        )
    redo = sorted(missing + [n for n, _ in invalid])
    for n, why in invalid[:_SHOWN]:
        problems.append(f"unit {n}: {why}; its completion record was removed so that it is scored again")
    engine = json.loads(next(iter(engines))) if len(engines) == 1 else None
    return entries, problems, redo, engine


def finalize(output: str | Path, *, keep_work: bool = False) -> dict[str, Any]:
    out = Path(output)
    if (out / MANIFEST_NAME).exists():
        return read_manifest(out).data
    run_file, plan = work_dir(out) / RUN_FILE, read_plan(out)
    if not run_file.exists() or plan is None:
        raise IncompleteOutput(
            f"{out}: no finished plan in {work_dir(out)}; start the annotation with `remit-annotate run ...` "
            "(or the one-shot `remit-annotate --base ... --output ...`) first."
        )
    run = json.loads(run_file.read_text())
    if plan.get("run_id") != run["run_id"]:
        raise ShardError(
            f"{work_dir(out) / PLAN_FILE}: planned for another run than {run_file}; delete "
            f"{work_dir(out)} and start again"
        )
    entries, problems, redo, engine = check_units(out, run, plan)
    if redo or problems:
        lines = [f"{out}: not finalized."]
        if redo:
            lines.append(f"{len(redo)} of {len(plan['units'])} units are not finished: {_shown(redo)}.")
        lines += problems
        if redo:
            lines += [
                "Finish them with any number of workers (unit u goes to --rank u % W of --world-size W), e.g.:",
                f"  {resume_command(run['config'], out)}",
                f"or `remit-annotate launch` / the Slurm array with the same flags; then `remit-annotate finalize {out}`.",
            ]
        raise IncompleteOutput("\n".join(lines))
    run_out = {k: v for k, v in run.items() if k != "engine_request"}
    run_out["engine"] = engine
    run_out["input"] = {
        **run["input"],
        **{k: plan["totals"][k] for k in ("documents", "tokens", "last_row_tokens", "skipped", "skip_examples")},
    }
    manifest = assemble_manifest(run_out, entries)
    # Unique temporary name: a Slurm finalize step and a user may finalize at once (same bytes either way).
    # The other one may also sweep our temporary file away below; its manifest is then already in place.
    try:
        write_json_atomic(out / MANIFEST_NAME, manifest)
    except FileNotFoundError:
        if not (out / MANIFEST_NAME).exists():
            raise
    for stray in out.glob("*.tmp"):
        stray.unlink(missing_ok=True)
    if not keep_work:
        shutil.rmtree(work_dir(out), ignore_errors=True)
    else:
        # Base log-probs of finished units are inside the shards now; a crash between a unit's record
        # and their deletion can leave some behind.
        for orphan in (work_dir(out) / "base").glob("*.npz"):
            orphan.unlink(missing_ok=True)
    return manifest


__all__ = ["PLAN_FILE", "IncompleteOutput", "check_units", "finalize", "resume_command"]
