"""`AnnotateConfig` is the job surface: frozen flags, and every flag generated from it round-trips.

The flags of repair, finalize and launch are small dataclasses of their own; where they share a flag with
the job they point to `AnnotateConfig`'s declaration, which is checked here too."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import shlex
import typing
from pathlib import Path
from typing import Any

import pytest

from remit.annotate.cli import build_parser
from remit.annotate.config import RUN_LOCAL_FIELDS, AnnotateConfig
from remit.annotate.engines.base import EngineSettings
from remit.annotate.finalize import FinalizeFlags, resume_command
from remit.annotate.launch import LaunchFlags, job_flags
from remit.annotate.repair import RepairFlags
from remit.common.flags import config_from_args, flags, literal_choices, to_argv

#: Frozen: adding or renaming a flag must be a deliberate change here (and in the docs). `stats` and
#: `show` freeze theirs in tests/annotate/inspect.
JOB_FLAGS = [
    "--base",
    "--bos",
    "--center",
    "--dtype",
    "--engine",
    "--eos",
    "--eps",
    "--gpu-memory-utilization",
    "--id-field",
    "--input",
    "--keep-work",
    "--kv-cache-gib",
    "--max-batch-tokens",
    "--output",
    "--progress-every",
    "--rl",
    "--rows-per-shard",
    "--score",
    "--seq-len",
    "--split",
    "--strict",
    "--tensor-parallel-size",
    "--text-field",
    "--token-field",
    "--verbose",
]
COMMAND_FLAGS = {
    None: JOB_FLAGS,
    "run": sorted(JOB_FLAGS + ["--rank", "--world-size"]),
    "plan": JOB_FLAGS,
    "launch": sorted(JOB_FLAGS + ["--gpus", "--log-dir", "--no-pin", "--workers"]),
    "finalize": ["--keep-work"],
    "repair": ["--keep-work", "--print", "--progress-every", "--score", "--verbose"],
    "validate": [],
    "verify": ["--base", "--dtype", "--json", "--max-batch-tokens", "--rl", "--rows", "--seed", "--tolerance"],
}


def _flags(parser) -> list[str]:
    return sorted(
        o for a in parser._actions for o in a.option_strings if o.startswith("--") and o not in ("--help", "--version")
    )


@pytest.mark.parametrize("command", list(COMMAND_FLAGS), ids=lambda c: c or "one-shot")
def test_flags_are_frozen(command):
    assert _flags(build_parser(command)) == COMMAND_FLAGS[command]


def test_the_run_identity_is_every_field_but_the_run_local_ones():
    names = [f.name for f in dataclasses.fields(AnnotateConfig)]
    assert set(RUN_LOCAL_FIELDS) == {
        "output",
        "strict",
        "keep_work",
        "progress_every_s",
        "plan_timeout_s",
        "score",
        "verbose",
        "lease_heartbeat_s",
        "lease_stale_s",
    }
    cfg = AnnotateConfig(base="b", rl="r", inputs=["c.jsonl"], output="o")
    assert sorted(cfg.identity()) == sorted(n for n in names if n not in RUN_LOCAL_FIELDS)


def _off_default(hint: Any, default: Any) -> Any:
    """A valid value different from `default`, chosen by type."""
    choices = literal_choices(hint)
    if choices is not None:
        return next(c for c in choices if c != default)
    if default is None:
        return "ids"
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return round(default / 2 + 0.01, 4)
    if isinstance(default, str):
        return default + "_x"
    if isinstance(default, list):
        return ["validation", "test"]
    raise AssertionError(f"no off-default value for {hint} (default {default!r}); extend _off_default")


def _every_field_off_default(tmp_path: Path) -> AnnotateConfig:
    hints = typing.get_type_hints(AnnotateConfig)
    values: dict[str, Any] = {
        "base": tmp_path / "models" / "base",
        "rl": tmp_path / "models" / "rl-tuned",
        "inputs": [tmp_path / "a b.jsonl", tmp_path / "corpus"],  # a space: the command must quote it
        "output": tmp_path / "out",
    }
    for f in dataclasses.fields(AnnotateConfig):
        if f.name not in values:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            values[f.name] = _off_default(hints[f.name], default)
            assert values[f.name] != default, f.name
    return AnnotateConfig(**values)


def test_the_resume_command_describes_the_same_run(tmp_path):
    """Every identity field off its default -> resume command -> parsed config: the identity survives."""
    cfg = _every_field_off_default(tmp_path)
    command = shlex.split(resume_command(cfg.identity(), cfg.output))
    assert command[:2] == ["remit-annotate", "run"]
    back = config_from_args(AnnotateConfig, build_parser("run").parse_args(command[2:]))
    assert back.identity() == cfg.identity()
    # And the command leaves out what is at its default (but the fields that say what the job is).
    defaults = AnnotateConfig(base="b", rl="r", inputs=["c"], output="o")
    short = shlex.split(resume_command(defaults.identity(), defaults.output))
    assert [a for a in short if a.startswith("--")] == [
        "--base",
        "--rl",
        "--input",
        "--output",
        "--seq-len",
        "--rows-per-shard",
        "--engine",
    ]


def test_the_launcher_gives_its_workers_the_same_config(tmp_path):
    """Every field with a flag off its default -> launcher -> worker command line -> the same config."""
    cfg = _every_field_off_default(tmp_path)
    argv = ["--workers", "3", "--no-pin", "--gpus", "none"]
    for fl in flags(AnnotateConfig):
        argv += fl.to_argv(getattr(cfg, fl.name))
    launch_args = build_parser("launch").parse_args(argv)
    worker_argv = job_flags(launch_args)
    assert not {"--workers", "--no-pin", "--gpus", "--log-dir"} & set(worker_argv)
    worker = config_from_args(AnnotateConfig, build_parser("run").parse_args(worker_argv))
    launcher = config_from_args(AnnotateConfig, launch_args)
    no_flag = {"plan_timeout_s", "lease_heartbeat_s", "lease_stale_s"}  # library-only: their defaults
    expected = dataclasses.replace(cfg, **{n: getattr(AnnotateConfig, n) for n in no_flag})
    assert worker == launcher == expected


@pytest.mark.parametrize(
    "change, message",
    [
        ({"engine": "tgi"}, r"engine must be one of \('vllm', 'hf'\); got 'tgi'"),
        ({"center": "doc"}, "center must be one of"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"bos": "maybe"}, "bos must be one of"),
        ({"eos": "auto"}, "eos must be one of"),
        ({"seq_len": 0}, "seq_len must be >= 1"),
        ({"rows_per_shard": 0}, "rows_per_shard must be >= 1"),
        ({"eps": 1.0}, "eps must lie in"),
        ({"inputs": []}, "give at least one input path"),
    ],
)
def test_a_bad_value_names_the_field(change, message):
    kwargs = {"base": "b", "rl": "r", "inputs": ["c.jsonl"], "output": "o", **change}
    with pytest.raises(ValueError, match=message):
        AnnotateConfig(**kwargs)


#: The commands' own flag dataclasses: their command, their fields, and those declared by `AnnotateConfig`.
COMMAND_CONFIGS = {
    RepairFlags: ("repair", ["output", "score", "keep_work", "progress_every_s", "verbose", "print_command"]),
    FinalizeFlags: ("finalize", ["output", "keep_work"]),
    LaunchFlags: ("launch", ["workers", "gpus", "no_pin", "log_dir"]),
}
SHARED = {RepairFlags: {"score", "keep_work", "progress_every_s", "verbose"}, FinalizeFlags: {"keep_work"}}


@pytest.mark.parametrize("cls", list(COMMAND_CONFIGS), ids=lambda c: c.__name__)
def test_command_flags_are_frozen_and_share_the_job_declarations(cls):
    _, fields = COMMAND_CONFIGS[cls]
    assert [f.name for f in dataclasses.fields(cls)] == fields
    job = {fl.name: fl for fl in flags(AnnotateConfig)}
    for fl in flags(cls):
        if fl.name not in SHARED.get(cls, set()):
            assert fl.name not in job or fl.flag != job[fl.name].flag, f"{fl.flag}: declare it with option_of"
            continue
        mine, theirs = fl, job[fl.name]
        assert (mine.flag, mine.kind, mine.type) == (theirs.flag, theirs.kind, theirs.type)
        if fl.name != "score":  # repair's --score defaults to what the output holds
            assert (mine.help, mine.default, mine.choices) == (theirs.help, theirs.default, theirs.choices)
        else:
            assert mine.choices == theirs.choices and mine.default is None


@pytest.mark.parametrize("cls", list(COMMAND_CONFIGS), ids=lambda c: c.__name__)
def test_command_flags_round_trip(cls, tmp_path):
    """Every field off its default -> command line -> parsed -> the same flags."""
    command, _ = COMMAND_CONFIGS[cls]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING or hints[f.name] in (Path, Path | None):
            values[f.name] = tmp_path / f.name
        else:
            values[f.name] = _off_default(hints[f.name], f.default)
    want = cls(**values)
    job = ["--base", "b", "--rl", "r", "--input", "c", "--output", "o"] if cls is LaunchFlags else []
    parsed = build_parser(command).parse_args(job + to_argv(cls, vars(want)))
    assert config_from_args(cls, parsed) == want


@pytest.mark.parametrize("cls", [AnnotateConfig, EngineSettings, *COMMAND_CONFIGS])
def test_every_config_field_has_a_docstring(cls):
    """A string right after each field's declaration, as the style asks for config dataclasses."""
    source = ast.parse(inspect.getsource(cls))
    body = source.body[0].body
    documented = {
        stmt.target.id
        for stmt, nxt in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.target, ast.Name)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
        and isinstance(nxt.value.value, str)
    }
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
    assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
