"""Command-line flags generated from a config dataclass, whose fields are the single flag list.

A field declared with `option(...)` carries its flag, help text and argparse group; its type gives
the rest: `bool` is a switch, `list[...]` takes one or more values, `X | None` may be left unset, and a
`Literal[...]` type lists the choices. `option(..., positional=True)` is a positional argument (a
command's OUTPUT folder). A command that shares a flag with another config declares its field with
`option_of(OtherConfig, "name")`, so the help, default and choices are written once. From that one
declaration:

- `add_arguments` adds the flags to a parser (any dataclass: a new command with its own config uses
  the same machinery);
- `config_from_args` builds the config from the parsed flags;
- `to_argv` writes values back as flags (resume commands, the launcher's worker commands);
- `check_choices` validates every `Literal` field (called by the config's ``__post_init__``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    flag: str | None = None,
    run_local: bool = False,
    required: bool = False,
    positional: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field with a flag. `flag` defaults to the field name with dashes (``seq_len`` ->
    ``--seq-len``); `run_local` marks a field that does not change the output (left out of the run's
    identity, so it may differ between the workers of one run); `required` makes the command line ask
    for a field that has a default for library callers; `positional` makes it a positional argument
    named after the field."""
    metadata = {
        "help": help,
        "group": group,
        "flag": flag,
        "run_local": run_local,
        "required": required,
        "positional": positional,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option_of(cls: type, name: str, **override: Any) -> Any:
    """Field `name` of dataclass `cls` declared again, for a config that shares its flag: the same flag,
    help, group, default and run-locality unless `override` gives another (e.g. ``group=...``)."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None or "help" not in f.metadata:
        raise ValueError(f"{cls.__name__} has no field {name!r} with a flag")
    kwargs: dict[str, Any] = {k: f.metadata[k] for k in ("help", "group", "flag", "run_local")}
    if f.default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = f.default_factory
    elif f.default is not dataclasses.MISSING:
        kwargs["default"] = f.default
    kwargs.update(override)
    return option(**kwargs)


def library_only(
    default: Any = dataclasses.MISSING, *, run_local: bool = False, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A config field without a flag (set from Python only)."""
    metadata = {"flag": False, "run_local": run_local}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field's flag, resolved from its declaration and type."""

    name: str
    flag: str
    help: str
    group: str
    kind: Literal["switch", "list", "value", "positional"]
    type: type
    choices: tuple[str, ...] | None
    required: bool
    default: Any

    def to_argv(self, value: Any) -> list[str]:
        if self.kind == "switch":
            return [self.flag] if value else []
        if value is None:
            return []
        if self.kind == "positional":
            return [str(value)]
        if self.kind == "list":
            return [self.flag, *map(str, value)] if value else []
        return [self.flag, str(value)]


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The choices of a `Literal` type (also inside ``X | None``), else None."""
    hint, _ = _unwrap(hint)
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None


def flags(cls: type) -> list[Flag]:
    """The flags of dataclass `cls`, in field order (fields declared without a flag are left out)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        hint, _ = _unwrap(hints[f.name])
        origin = typing.get_origin(hint)
        kind: Literal["switch", "list", "value", "positional"]
        type_: Any
        if meta.get("positional"):
            kind, type_ = "positional", hint
        elif hint is bool:
            kind, type_ = "switch", bool
        elif origin is list:
            kind, type_ = "list", typing.get_args(hint)[0]
        elif origin is Literal:
            kind, type_ = "value", str
        else:
            kind, type_ = "value", hint
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        required = no_default or bool(meta.get("required"))
        out.append(
            Flag(
                name=f.name,
                flag=f.name if meta.get("positional") else meta["flag"] or "--" + f.name.replace("_", "-"),
                help=meta["help"],
                group=meta["group"],
                kind=kind,
                type=type_,
                choices=literal_choices(hint),
                required=required,
                default=None
                if no_default
                else f.default_factory()
                if f.default_factory is not dataclasses.MISSING
                else f.default,
            )
        )
    return out


def run_local_fields(cls: type) -> tuple[str, ...]:
    """Fields that do not change the output."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("run_local"))


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Collection[str] = ()) -> None:
    """Add the flags of `cls` (but those named in `exclude`) to `parser`, one argument group per `group`;
    positional arguments go on the parser itself, where argparse lists them first."""
    groups: dict[str, Any] = {}
    for fl in flags(cls):
        if fl.name in exclude:
            continue
        if fl.kind == "positional":
            optional: dict[str, Any] = {} if fl.required else {"nargs": "?", "default": fl.default}
            parser.add_argument(fl.name, type=fl.type, help=fl.help, **optional)
            continue
        if fl.group not in groups:
            groups[fl.group] = parser.add_argument_group(fl.group)
        g = groups[fl.group]
        if fl.kind == "switch":
            g.add_argument(fl.flag, dest=fl.name, action="store_true", help=fl.help)
            continue
        metavar = None if fl.choices else fl.flag.lstrip("-").replace("-", "_").upper()
        kwargs: dict[str, Any] = (
            {"nargs": "+", "action": "extend", "default": fl.default} if fl.kind == "list" else {"default": fl.default}
        )
        g.add_argument(
            fl.flag,
            dest=fl.name,
            type=fl.type,
            choices=fl.choices,
            required=fl.required,
            metavar=metavar,
            help=fl.help,
            **kwargs,
        )


def config_from_args(cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """`cls` built from the parsed flags (fields without a flag keep their defaults unless in `extra`)."""
    values = {fl.name: getattr(args, fl.name) for fl in flags(cls) if hasattr(args, fl.name)}
    return cls(**values, **extra)


def to_argv(
    cls: type,
    values: Mapping[str, Any],
    *,
    only: Collection[str] | None = None,
    changed_only: bool = False,
    always: Collection[str] = (),
) -> list[str]:
    """`values` (field name -> value, e.g. a config's dict) as flags of `cls`, in field order.

    `only` limits the fields; with `changed_only`, a value equal to its default is left out unless its
    field is in `always` (required fields are always written)."""
    argv: list[str] = []
    for fl in flags(cls):
        if fl.name not in values or (only is not None and fl.name not in only):
            continue
        value = values[fl.name]
        if changed_only and not fl.required and fl.name not in always and value == fl.default:
            continue
        argv += fl.to_argv(value)
    return argv


def check_choices(config: Any) -> None:
    """Raise ValueError naming the field when a `Literal` field holds a value outside its choices."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        choices = literal_choices(hints[f.name])
        value = getattr(config, f.name)
        if choices is not None and value not in choices and not (value is None and _unwrap(hints[f.name])[1]):
            raise ValueError(f"{f.name} must be one of {choices}; got {value!r}")


__all__ = [
    "Flag",
    "add_arguments",
    "check_choices",
    "config_from_args",
    "flags",
    "library_only",
    "literal_choices",
    "option",
    "option_of",
    "run_local_fields",
    "to_argv",
]
