"""`remit-annotate repair OUTPUT`: finish or repair an output with the settings it records.

    remit-annotate repair OUTPUT [--score both|rl] [--print]

- The job's settings come from the output itself: its manifest, else its run description
  (``_work/run.json``), else its ownership marker. Nothing needs to be retyped.
- Every shard is checked against the manifest (existence, size, sha256) and as `validate` checks it
  (format, weight rule); only the missing or damaged units are scored again (one worker, in this
  process), and the manifest is written again. An unfinished output is finished. ``--score both`` adds the base pass to an RL-only output.
- ``--print`` prints the equivalent `remit-annotate run` command instead, for many workers (`launch`,
  a Slurm array, any ``--rank/--world-size`` split).

This is the command every "missing or damaged shard" message recommends.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remit.annotate.config import RUN_LOCAL_FIELDS, AnnotateConfig, Score
from remit.annotate.workdir import WorkDir
from remit.common.flags import add_arguments as add_config_arguments
from remit.common.flags import config_from_args, option, option_of

_REPAIR = "repair"


@dataclass(frozen=True)
class RepairFlags:
    """The flags of `remit-annotate repair`; those it shares with the job are `AnnotateConfig`'s."""

    output: Path = option(positional=True, help="annotation output folder", group=_REPAIR)
    """The output to finish or repair; its settings are read from it."""
    score: Score | None = option_of(
        AnnotateConfig,
        "score",
        default=None,
        help="passes the output must hold (default: what it holds; both completes an RL-only output)",
        group=_REPAIR,
    )
    """The passes to make; None: the passes the output holds (or was started for)."""
    keep_work: bool = option_of(AnnotateConfig, "keep_work", group=_REPAIR)
    """Keep _work/ after the manifest is written."""
    progress_every_s: float = option_of(AnnotateConfig, "progress_every_s", group=_REPAIR)
    """Seconds between progress lines."""
    verbose: bool = option_of(AnnotateConfig, "verbose", group=_REPAIR)
    """Let the engines' and libraries' own log lines through."""
    print_command: bool = option(
        False,
        flag="--print",
        help="print the `remit-annotate run` command for many workers instead",
        group=_REPAIR,
    )
    """Print the equivalent `remit-annotate run` command instead of running it."""


def recorded_config(output: Path) -> tuple[dict[str, Any], str, str]:
    """(the job's identity fields, where they were found, the passes the output holds or was run for)."""
    work = WorkDir(output)
    if not output.is_dir():
        raise ValueError(f"{output}: no such output folder")
    if not work.owned():
        raise ValueError(
            f"{output}: not an output of remit-annotate (no {work.marker_path.name}, manifest.json or _work/); "
            "nothing to repair"
        )
    for path, data in work.recorded_settings():
        if isinstance(data.get("config"), dict):
            passes = data.get("passes", "both") if path == work.manifest_path else _passes_of_records(work)
            return data["config"], str(path), passes
    raise ValueError(
        f"{output}: neither manifest.json, _work/run.json nor {work.marker_path.name} records the job's settings; "
        "run the original remit-annotate command again"
    )


def _passes_of_records(work: WorkDir) -> str:
    """rl when every completion record holds the RL pass only (the run was started with --score rl)."""
    return "rl" if work.record_passes() == {"rl"} else "both"


def config_from_identity(identity: dict[str, Any], **local: Any) -> AnnotateConfig:
    """The job's config from its recorded identity plus run-local settings."""
    known = {f.name for f in dataclasses.fields(AnnotateConfig)} - set(RUN_LOCAL_FIELDS)
    unknown = sorted(set(identity) - known)
    if unknown:
        raise ValueError(
            f"the recorded settings hold fields this remit does not know ({', '.join(unknown)}): the output was "
            "written by another remit version; repair it with that version"
        )
    return AnnotateConfig(**identity, **local)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, RepairFlags)


def run(args: argparse.Namespace) -> int:
    from remit.annotate.finalize import resume_command
    from remit.annotate.job import run_job

    flags = config_from_args(RepairFlags, args)
    identity, source, held = recorded_config(flags.output)
    score = flags.score or ("rl" if held == "rl" else "both")
    if flags.print_command:
        print(resume_command(identity, flags.output, score=score))
        return 0
    cfg = config_from_identity(
        identity,
        output=flags.output,
        score=score,
        keep_work=flags.keep_work,
        progress_every_s=flags.progress_every_s,
        verbose=flags.verbose,
    )
    print(f"repair: {flags.output} with the settings recorded in {source}", flush=True)
    return run_job(cfg, 0, 1, deep=True)
