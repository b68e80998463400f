"""`remit-annotate`: score a corpus with a base and an RL model and write ReMiT weights to Parquet shards.

    remit-annotate --base DIR --rl DIR --input PATH [PATH ...] --output DIR     one shot: plan, score, finalize
    remit-annotate run ... [--rank R --world-size W]                           one worker of many
    remit-annotate plan | finalize | repair | launch | validate | verify | stats | show ...
    remit-annotate pack --tokenizer DIR --input PATH [PATH ...] --output DIR   token ids only, no scoring

- The CLI only parses flags, builds one config and calls one library function.
- The job flags are generated from `AnnotateConfig`; each command is one `Command` in `COMMANDS`.
- `--help` loads no engine: the commands import what they need when they run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remit import __version__


@dataclass(frozen=True)
class Command:
    """One subcommand: its line in the overview, its flags and what it runs."""

    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- the job commands (one shot, run, plan) -----------------------------------------------------------------


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    from remit.annotate.config import AnnotateConfig
    from remit.common.flags import add_arguments

    add_arguments(parser, AnnotateConfig)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from remit.annotate.launch import WorkerFlags
    from remit.common.flags import add_arguments

    add_job_arguments(parser)
    add_arguments(parser, WorkerFlags)


def _score(args: argparse.Namespace, rank: int, world: int) -> int:
    """Score this rank's units; finalize when this is the only worker."""
    from remit.annotate.config import AnnotateConfig
    from remit.annotate.job import run_job
    from remit.common.flags import config_from_args

    return run_job(config_from_args(AnnotateConfig, args), rank, world)


def cmd_oneshot(args: argparse.Namespace) -> int:
    return _score(args, 0, 1)


def cmd_run(args: argparse.Namespace) -> int:
    from remit.annotate.launch import rank_from_env

    return _score(args, *rank_from_env(args.rank, args.world_size))


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from remit.annotate.claim import claim
    from remit.annotate.config import AnnotateConfig
    from remit.annotate.plan import describe_run, ensure_plan
    from remit.annotate.workdir import WorkDir
    from remit.common.flags import config_from_args

    cfg = config_from_args(AnnotateConfig, args)
    setup = describe_run(cfg)
    work = WorkDir(cfg.output)
    claimed = claim(work, setup.run, cfg.score)
    if not claimed.complete:
        plan = ensure_plan(cfg, setup.named_as(claimed.run), work, rank=0)
        print(json.dumps(plan.totals.to_dict(), indent=2))
    return 0


# -- the other commands -------------------------------------------------------------------------------------


def _add_output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="annotation output folder")


def _add_finalize_arguments(parser: argparse.ArgumentParser) -> None:
    from remit.annotate.finalize import FinalizeFlags
    from remit.common.flags import add_arguments

    add_arguments(parser, FinalizeFlags)


def cmd_finalize(args: argparse.Namespace) -> int:
    from remit.annotate.finalize import FinalizeFlags, finalize
    from remit.common.flags import config_from_args

    flags = config_from_args(FinalizeFlags, args)
    manifest = finalize(flags.output, keep_work=flags.keep_work)
    t = manifest["totals"]
    print(f"{flags.output}: {t['shards']} shards, {t['rows']:,} rows, {t['tokens']:,} tokens; manifest.json written")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from remit.shards.manifest import repair_command
    from remit.shards.validate import validate_output

    problems = validate_output(args.output)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(
            f"{args.output}: {len(problems)} problem(s); `{repair_command(args.output)}` re-scores the shards "
            "that do not match the manifest",
            file=sys.stderr,
        )
        return 1
    print(f"{args.output}: valid")
    return 0


def _from_module(summary: str, load: Callable[[], Any]) -> Command:
    """A command whose module (imported only when the command is used) has add_arguments(parser) and run(args)."""
    return Command(summary, lambda p: load().add_arguments(p), lambda args: load().run(args))


def _repair() -> Any:
    from remit.annotate import repair

    return repair


def _launch() -> Any:
    from remit.annotate import launch

    return launch


def _verify() -> Any:
    from remit.annotate import verify

    return verify


def _stats() -> Any:
    from remit.annotate.inspect import stats

    return stats


def _show() -> Any:
    from remit.annotate.inspect import show

    return show


def _pack() -> Any:
    from remit.annotate import pack

    return pack


#: The one-shot job, run with no command name.
ONESHOT = Command("plan, score with both models, finalize (the flags above)", add_job_arguments, cmd_oneshot)
COMMANDS: dict[str, Command] = {
    "run": Command(
        "score this worker's share of the units (same flags + --rank/--world-size)", _add_run_arguments, cmd_run
    ),
    "plan": Command("only tokenize and pack the corpus into units (same flags)", add_job_arguments, cmd_plan),
    "finalize": Command("check all units and write manifest.json", _add_finalize_arguments, cmd_finalize),
    "repair": _from_module("re-score the missing or damaged shards of an output with its recorded settings", _repair),
    "launch": _from_module("run N local worker processes, then finalize", _launch),
    "validate": Command("re-read every shard and check it against the manifest", _add_output_argument, cmd_validate),
    "verify": _from_module("re-score a sample of rows with the hf engine and report the differences", _verify),
    "stats": _from_module("weight statistics (DuckDB over the shards)", _stats),
    "show": _from_module("an HTML page of tokens coloured by weight", _show),
    "pack": _from_module(
        "token ids in sequence-aligned shards without scoring (for `remit-train --weights none`)", _pack
    ),
}


def _epilog() -> str:
    lines = ["commands:", f"  {'(none)':<10} {ONESHOT.summary}"]
    lines += [f"  {name:<10} {c.summary}" for name, c in COMMANDS.items()]
    lines.append("Run `remit-annotate COMMAND --help` for a command's flags.")
    return "\n".join(lines)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    prog = "remit-annotate" + (f" {command}" if command else "")
    p = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog() if command is None else None,
    )
    if command is None:
        p.add_argument("--version", action="version", version=f"remit {__version__}")
    (ONESHOT if command is None else COMMANDS[command]).add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv[1:] if command else argv)
    from remit.common.errors import run_command
    from remit.common.quiet import quiet_libraries

    quiet_libraries(bool(getattr(args, "verbose", False)))

    # Engine errors (RuntimeError) name the model folder and the fix.
    return run_command(
        "remit-annotate", lambda: (ONESHOT if command is None else COMMANDS[command]).run(args), (RuntimeError,)
    )


if __name__ == "__main__":
    sys.exit(main())
