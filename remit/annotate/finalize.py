"""Finalize: check every unit is complete and consistent, then write manifest.json (last).

Checks:
- every planned unit has a completion record of this run that agrees with the plan (rows, tokens,
  first sample id, token checksum), and its shard exists and hashes to the recorded sha256;
- all units were scored with the same engine, version, dtype and settings, and each unit's base pass
  with the same as its RL pass;
- sample ids are contiguous from 0.

Everything wrong is reported at once. A unit whose shard is missing or does not match its record
loses the record, so that the printed resume command (any number of workers) scores it again; a unit
without a record is simply listed. Nothing is written until every unit checks out, and the manifest
is written last, so an output with a manifest is complete.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remit.annotate.claim import check_shards
from remit.annotate.config import AnnotateConfig
from remit.annotate.records import Plan
from remit.annotate.workdir import WorkDir
from remit.common.faults import failpoint
from remit.common.flags import option, option_of, to_argv
from remit.common.listing import first_few
from remit.shards.checksum import file_sha256
from remit.shards.manifest import Passes, ShardError, assemble_manifest, read_manifest, repair_command

_SHOWN = 20
#: Flags a resume command always shows, default or not: they say what the run is.
_ALWAYS_SHOWN = ("engine", "seq_len", "rows_per_shard")


class IncompleteOutput(ShardError):
    pass


@dataclass(frozen=True)
class FinalizeFlags:
    """The flags of `remit-annotate finalize`; --keep-work is `AnnotateConfig`'s."""

    output: Path = option(positional=True, help="annotation output folder", group="finalize")
    """The output whose units are all scored."""
    keep_work: bool = option_of(AnnotateConfig, "keep_work", group="finalize")
    """Keep _work/ after the manifest is written."""


def resume_command(config: dict[str, Any], output: Path, command: str = "run", score: str = "both") -> str:
    """The command line that continues this run (`run`: one worker, which also finalizes; any
    --rank/--world-size split, `launch` or the Slurm array take the same flags).

    `config` is the run's identity (as recorded in run.json): every field in it that is not at its
    default is given, so that the command describes this run and no other; `score` the passes to make."""
    values = {**config, "output": str(output), "score": score}
    argv = to_argv(AnnotateConfig, values, changed_only=True, always=_ALWAYS_SHOWN)
    return shlex.join(["remit-annotate", command, *argv])


def _shown(units: list[int]) -> str:
    return ", ".join(map(str, units[:_SHOWN])) + (f" ... ({len(units)} in all)" if len(units) > _SHOWN else "")


@dataclass(frozen=True)
class UnitCheck:
    """What `check_units` found."""

    entries: list[dict[str, Any]]
    """The manifest's shard entries of the complete units, in unit order."""
    problems: list[str]
    """Everything wrong, one message each, with what to do."""
    redo: list[int]
    """Units to score again (no record, or one that could not be trusted)."""
    engine: dict[str, Any] | None
    """The engine set-up every unit was scored with; None unless all agree."""
    passes: dict[str, list[int]]
    """The complete units by the passes their shards hold (both, rl)."""


def check_units(work: WorkDir, run_id: str, plan: Plan) -> UnitCheck:
    """Check every planned unit. A unit whose record cannot be trusted loses it here (see the module
    docstring)."""
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    missing: list[int] = []
    invalid: list[tuple[int, str]] = []
    engines: dict[str, list[int]] = {}
    passes: dict[str, list[int]] = {}
    mixed: list[str] = []  # units whose two passes used different engine set-ups
    next_sample = 0
    for u in plan.units:
        n = u.unit
        if u.first_sample_id != next_sample:
            problems.append(
                f"{work.plan_path}: unit {n} starts at sample id {u.first_sample_id}, "
                f"expected {next_sample}; delete {work.root} and run again"
            )
        next_sample = u.first_sample_id + u.rows
        record, why = work.trusted_record(u, run_id)
        if record is not None and file_sha256(work.inside(work.shard_path(n))) != record.shard.file_sha256:
            why = f"its shard {record.shard.file} differs from what was written (sha256 mismatch)"
            record = None
        if record is None:
            if why:
                invalid.append((n, why))
                work.drop_record(n)
            else:
                missing.append(n)
            continue
        passes.setdefault(record.passes, []).append(n)
        if record.passes == "both" and record.engine != record.engine_base:
            mixed.append(f"{work.record_path(n)}: the base pass used {record.engine_base}, the RL pass {record.engine}")
        engines.setdefault(json.dumps(record.engine, sort_keys=True), []).append(n)
        entries.append(record.shard.to_dict())
    if len(engines) > 1:
        groups = "; ".join(f"units {_shown(units)} with {setup}" for setup, units in engines.items())
        problems.append(
            f"{work.output}: units were scored with different engine set-ups ({groups}). Weights from different "
            f"engines, versions or settings are not comparable: delete {work.done_dir}/unit-N.json of the units "
            "whose set-up you do not want and run again with the other one."
        )
    if mixed:
        problems.append(
            f"{len(mixed)} units' passes used different engine set-ups ({first_few(mixed)}); delete their "
            "completion records and run again to re-score them"
        )
    redo = sorted(missing + [n for n, _ in invalid])
    if invalid:
        listed = [f"unit {n}: {why}" for n, why in invalid]
        problems.append(
            f"{len(invalid)} units' completion records were removed so that they are scored again ({first_few(listed)})"
        )
    engine = json.loads(next(iter(engines))) if len(engines) == 1 else None
    return UnitCheck(entries, problems, redo, engine, passes)


def _check_finished(work: WorkDir) -> dict[str, Any]:
    """A finished output's manifest, after checking every shard against it; refuse a missing or damaged one."""
    manifest = read_manifest(work.output)
    damaged = check_shards(work, manifest.shards)
    if damaged:
        listed = first_few([f"unit {n}: {why}" for n, why in sorted(damaged.items())])
        raise IncompleteOutput(
            f"{work.output}: the manifest is in place but {len(damaged)} of its {len(manifest.shards)} shards are "
            f"missing or damaged ({listed}). Run `{repair_command(work.output)}`: it re-scores only those units and "
            "writes the manifest again."
        )
    return manifest.data


def finish_left_over(work: WorkDir, keep_work: bool) -> None:
    """Clean up after a complete output whose finalize was stopped between its manifest and its cleanup:
    what `WorkDir.finish` removes is removed now, with a note naming it."""
    if keep_work or not work.root.is_dir():
        return
    print(
        f"note: {work.output} is complete; removing {work.root}, left by a finalize stopped after it wrote the "
        "manifest",
        file=sys.stderr,
        flush=True,
    )
    work.finish(keep_work)


def finalize(output: str | Path | WorkDir, *, keep_work: bool = False) -> dict[str, Any]:
    """Write the manifest of a finished run (or check and return the one already written)."""
    work = output if isinstance(output, WorkDir) else WorkDir(output)
    out = work.output
    if work.manifest_path.exists():
        manifest = _check_finished(work)
        finish_left_over(work, keep_work)
        return manifest
    run = work.read_run()
    plan = work.read_plan()
    if run is None or plan is None:
        raise IncompleteOutput(
            f"{out}: no finished plan in {work.root}; start the annotation with `remit-annotate run ...` "
            "(or the one-shot `remit-annotate --base ... --output ...`) first."
        )
    if plan.run_id != run.run_id:
        raise ShardError(
            f"{work.plan_path}: planned for another run than {work.run_path}; delete {work.root} and start again"
        )
    check = check_units(work, run.run_id, plan)
    # The passes of an unfinished output: RL-only when every finished unit is (resumed the same way).
    score = "rl" if check.passes and set(check.passes) == {"rl"} else "both"
    problems = list(check.problems)
    if len(check.passes) > 1:
        problems.append(
            f"{out}: units {_shown(check.passes['rl'])} hold only the RL pass, the others both. Score their base "
            f"pass: `{resume_command(run.config, out)}` (it loads only the base model for them)."
        )
    if check.redo or problems:
        lines = [f"{out}: not finalized."]
        if check.redo:
            lines.append(f"{len(check.redo)} of {len(plan.units)} units are not finished: {_shown(check.redo)}.")
        lines += problems
        if check.redo:
            lines += [
                "Finish them with any number of workers (unit u goes to --rank u % W of --world-size W), e.g.:",
                f"  {resume_command(run.config, out, score=score)}",
                f"or `remit-annotate launch` / the Slurm array with the same flags; then `remit-annotate finalize {shlex.quote(str(out))}`.",
            ]
        raise IncompleteOutput("\n".join(lines))
    passes: Passes = "rl" if "rl" in check.passes else "both"
    manifest = assemble_manifest(run.manifest_fields(check.engine, plan.totals, passes), check.entries)
    # A Slurm finalize step and a user may finalize at once (same bytes either way); the other one may
    # sweep our temporary file away below, and then its manifest is already in place.
    try:
        work.write_manifest(manifest)
    except FileNotFoundError:
        if not work.manifest_path.exists():
            raise
    failpoint("after-manifest")
    work.finish(keep_work)
    return manifest


__all__ = [
    "FinalizeFlags",
    "IncompleteOutput",
    "UnitCheck",
    "check_units",
    "finalize",
    "finish_left_over",
    "resume_command",
]
