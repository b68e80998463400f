"""Flags generated from a config dataclass: parser, config, command line and choices, on a toy config."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from remit.common.flags import (
    add_arguments,
    check_choices,
    config_from_args,
    flags,
    library_only,
    option,
    option_of,
    to_argv,
)

Mode = Literal["fast", "exact"]


@dataclass
class Toy:
    model: Path = option(help="model folder", group="data")
    """Required: no default."""
    files: list[Path] = option(flag="--file", help="input files", group="data")
    """Several values, under a flag that is not the field's name."""
    mode: Mode = option("exact", help="how", group="knobs")
    """A closed choice."""
    label: str | None = option(None, help="optional label", group="knobs")
    """May be left unset."""
    steps: int = option(10, help="steps", group="knobs")
    """A number."""
    verbose: bool = option(False, help="talk", group="knobs", run_local=True)
    """A switch."""
    secret: float = library_only(1.5)
    """Not a flag at all."""

    def __post_init__(self) -> None:
        check_choices(self)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p, Toy)
    return p


def test_flags_follow_the_declarations():
    got = {f.name: (f.flag, f.kind, f.choices, f.required) for f in flags(Toy)}
    assert got == {
        "model": ("--model", "value", None, True),
        "files": ("--file", "list", None, True),
        "mode": ("--mode", "value", ("fast", "exact"), False),
        "label": ("--label", "value", None, False),
        "steps": ("--steps", "value", None, False),
        "verbose": ("--verbose", "switch", None, False),
    }
    groups = {g.title: [a.dest for a in g._group_actions] for g in parser()._action_groups}
    assert groups["data"] == ["model", "files"] and groups["knobs"] == ["mode", "label", "steps", "verbose"]


def test_parse_build_and_write_back():
    argv = ["--model", "m", "--file", "a", "b c", "--mode", "fast", "--steps", "3", "--verbose"]
    toy = config_from_args(Toy, parser().parse_args(argv))
    assert toy == Toy(Path("m"), [Path("a"), Path("b c")], "fast", None, 3, True)
    again = config_from_args(Toy, parser().parse_args(to_argv(Toy, vars(toy))))
    assert again == toy
    assert "--label" not in to_argv(Toy, vars(toy))  # None: left out


def test_defaults_and_required_flags():
    toy = config_from_args(Toy, parser().parse_args(["--model", "m", "--file", "a"]))
    assert (toy.mode, toy.label, toy.steps, toy.verbose, toy.secret) == ("exact", None, 10, False, 1.5)
    with pytest.raises(SystemExit):
        parser().parse_args(["--file", "a"])  # --model is required
    with pytest.raises(SystemExit):
        parser().parse_args(["--model", "m", "--file", "a", "--mode", "slow"])  # not a choice


def test_changed_only_leaves_defaults_out_unless_always():
    values = {"model": "m", "files": ["a"], "mode": "exact", "label": None, "steps": 11, "verbose": False}
    assert to_argv(Toy, values, changed_only=True) == ["--model", "m", "--file", "a", "--steps", "11"]
    assert to_argv(Toy, values, changed_only=True, always=("mode",)) == [
        "--model",
        "m",
        "--file",
        "a",
        "--mode",
        "exact",
        "--steps",
        "11",
    ]
    assert to_argv(Toy, values, only=("steps",)) == ["--steps", "11"]


def test_exclude_leaves_flags_out_of_a_parser():
    p = argparse.ArgumentParser()
    add_arguments(p, Toy, exclude=("steps", "verbose"))
    assert not {"--steps", "--verbose"} & {o for a in p._actions for o in a.option_strings}


def test_a_value_outside_its_choices_names_the_field():
    with pytest.raises(ValueError, match=r"^mode must be one of \('fast', 'exact'\); got 'slow'$"):
        Toy(Path("m"), [], "slow")


@dataclass(frozen=True)
class Borrower:
    """A command that shares two of Toy's flags and has an OUTPUT positional."""

    output: Path = option(positional=True, help="output folder", group="mine")
    mode: Mode = option_of(Toy, "mode")
    steps: int = option_of(Toy, "steps", group="mine", default=4)


def test_a_shared_flag_is_declared_once_and_a_positional_comes_first():
    mine = {f.name: f for f in flags(Borrower)}
    toy = {f.name: f for f in flags(Toy)}
    assert (mine["mode"].help, mine["mode"].choices, mine["mode"].default, mine["mode"].group) == (
        toy["mode"].help,
        toy["mode"].choices,
        toy["mode"].default,
        "knobs",
    )
    assert (mine["steps"].help, mine["steps"].default, mine["steps"].group) == ("steps", 4, "mine")
    p = argparse.ArgumentParser()
    add_arguments(p, Borrower)
    assert [a.dest for a in p._positionals._group_actions if a.dest != "help"] == ["output"]
    got = config_from_args(Borrower, p.parse_args(["--mode", "fast", "out"]))
    assert got == Borrower(Path("out"), "fast", 4)
    assert to_argv(Borrower, vars(got)) == ["out", "--mode", "fast", "--steps", "4"]
    assert config_from_args(Borrower, p.parse_args(to_argv(Borrower, vars(got)))) == got
    with pytest.raises(ValueError, match="Toy has no field 'secret' with a flag"):
        option_of(Toy, "secret")
