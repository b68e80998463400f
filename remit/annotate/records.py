"""The records an annotation run keeps in its work folder, as frozen dataclasses.

- `RunDescription` (``_work/run.json``): what the run is; its hash is the run id. It becomes the
  manifest once every unit is done.
- `PlannedUnit` and `Plan` (``_work/plan.json``): the corpus cut into units, one per shard.
- `CompletionRecord` (``_work/done/unit-N.json``): a unit's shard, written last.

Each has `to_dict` (the JSON object on disk) and `from_dict`, which
raises `ValueError` on a malformed object so that a reader can treat it as unreadable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from remit.shards.checksum import bytes_sha256
from remit.shards.manifest import Passes
from remit.shards.writer import ShardInfo

#: Plan totals copied into the manifest's "input" section.
INPUT_TOTALS = (
    "documents",
    "tokens",
    "last_row_tokens",
    "skipped",
    "skip_examples",
    "ignored_files",
    "ignored_examples",
)


def covers(have: str, want: str) -> bool:
    """An output (or unit) holding the passes `have` is complete for `want`: both cover rl."""
    return have == want or (have == "both" and want == "rl")


def _take(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of dataclass `cls` from `data`; ValueError naming the first missing key."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    missing = [f.name for f in fields(cls) if f.name not in data]
    if missing:
        raise ValueError(f"key {missing[0]!r} missing")
    return {f.name: data[f.name] for f in fields(cls)}


#: Keys of an input path's entry that say how it was spelled: ``given`` (the spelling), ``given_inferred`` (set
#: when the spelling was read back from the shards of an output written before runs recorded it; then the
#: manifest leaves both out, as that output's manifest did).
SPELLING_KEYS = ("given", "given_inferred")


def _unnamed(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An input path's entry without its spelling."""
    return {k: v for k, v in entry.items() if k not in SPELLING_KEYS}


def _shard_of(unit: object, file: object) -> None:
    """ValueError unless `unit` is a unit number and `file` its shard's name (a plain name in the output
    folder: a record or plan naming anything else, e.g. a path with ``..``, is not remit's)."""
    if not isinstance(unit, int) or isinstance(unit, bool) or unit < 0:
        raise ValueError(f"unit {unit!r} is not a unit number")
    if file != f"shard-{unit:05d}.parquet":
        raise ValueError(f"unit {unit} names the shard {file!r}, not shard-{unit:05d}.parquet")


class _FlatRecord:
    """A record whose JSON object holds exactly its fields."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        return cls(**_take(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # a mixin: every subclass is a dataclass


@dataclass(frozen=True)
class RunDescription(_FlatRecord):
    """Everything that determines a run's output, known before scoring (the manifest's fields but the
    engine's own description, the shard list and the totals)."""

    remit_version: str
    config: dict[str, Any]
    """The config's identity (`AnnotateConfig.identity`)."""
    models: dict[str, Any]
    """"base" and "rl": path, weights hash, architecture, vocabulary size."""
    tokenizer: dict[str, Any]
    """Hash, path and the resolved BOS/EOS policy."""
    packing: dict[str, Any]
    weights: dict[str, Any]
    """eps, centring and the rule."""
    engine_request: dict[str, Any]
    """The engine and settings asked for; the manifest records what the engine reports instead."""
    input: dict[str, Any]
    """Input paths with their sizes, and the fields read."""
    run_id: str
    """sha256 of all the other fields: equal ids, equal output."""

    @classmethod
    def create(cls, **parts: Any) -> RunDescription:
        """A description with its run id computed from `parts` (every field but run_id). How the input paths
        were spelled (``input.paths[].given``) is left out: the same files are the same run, and the run
        names its records as it recorded them (`with_names_of`)."""
        hashed = dict(parts)
        if isinstance(parts.get("input"), Mapping) and "paths" in parts["input"]:
            hashed["input"] = {**parts["input"], "paths": [_unnamed(e) for e in parts["input"]["paths"]]}
        return cls(**parts, run_id=bytes_sha256(json.dumps(hashed, sort_keys=True).encode()))

    def with_names_of(self, recorded: Mapping[str, Any] | None) -> RunDescription:
        """This run with the input spellings that `recorded` (the JSON of this folder's run description or
        manifest) holds for the same resolved paths: a run continued or repaired from another working
        folder, or with the inputs spelled otherwise, names its records as the run first did."""
        theirs = (recorded or {}).get("input")
        theirs = theirs.get("paths") if isinstance(theirs, Mapping) else None
        mine = self.input.get("paths")
        if not isinstance(theirs, list) or not isinstance(mine, list) or len(theirs) != len(mine):
            return self
        paths = []
        for m, t in zip(mine, theirs, strict=True):
            entry = _unnamed(m)
            if isinstance(t, Mapping) and t.get("path") == m["path"] and isinstance(t.get("given"), str):
                entry.update({k: t[k] for k in SPELLING_KEYS if k in t})
            paths.append(entry)
        return replace(self, input={**self.input, "paths": paths})

    def input_spellings(self) -> list[Path]:
        """Each input path as the run spelled it, which names its records (the resolved path if the same)."""
        return [Path(e.get("given", e["path"])) for e in self.input.get("paths", [])]

    def manifest_fields(self, engine: dict[str, Any] | None, totals: PlanTotals, passes: Passes) -> dict[str, Any]:
        """The run's part of the manifest: the engine as it described itself, the passes the shards hold,
        the plan's input totals."""
        out = {k: v for k, v in self.to_dict().items() if k != "engine_request"}
        out["engine"] = engine
        out["passes"] = passes
        out["input"] = {**self.input, **{k: getattr(totals, k) for k in INPUT_TOTALS}}
        if "paths" in self.input:
            out["input"]["paths"] = [_unnamed(e) if e.get("given_inferred") else e for e in self.input["paths"]]
        return out


@dataclass(frozen=True)
class PlannedUnit(_FlatRecord):
    """One unit of work: `rows` consecutive rows, scored into one shard."""

    unit: int
    file: str
    """The shard's file name."""
    first_sample_id: int
    rows: int
    tokens: int
    token_checksum: str
    """Checksum of the unit's token ids and row lengths; the shard must carry the same."""

    def __post_init__(self) -> None:
        _shard_of(self.unit, self.file)


@dataclass(frozen=True)
class PlanTotals(_FlatRecord):
    documents: int
    tokens: int
    rows: int
    units: int
    last_row_tokens: int
    """Tokens in the output's last row (the only row that may be shorter than seq_len + 1)."""
    skipped: dict[str, int]
    """Unusable records by kind."""
    skip_examples: list[str]
    """The first few skipped records, each with where it is and why it was skipped."""
    ignored_files: int
    """Files inside input folders that are no known input type (never read)."""
    ignored_examples: list[str]
    """The first few of them."""


@dataclass(frozen=True)
class Plan:
    run_id: str
    units: tuple[PlannedUnit, ...]
    totals: PlanTotals
    seconds: float
    """Planning time (informational; not part of the output)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        d = _take(cls, data)
        if not isinstance(d["units"], list):
            raise ValueError("units: not a list")
        units = []
        for i, u in enumerate(d["units"]):
            try:
                units.append(PlannedUnit.from_dict(u))
            except (TypeError, ValueError) as e:
                raise ValueError(f"entry {i} of units: {e}") from None
        if [u.unit for u in units] != list(range(len(units))):
            raise ValueError("units are not numbered 0, 1, 2, ... in order")
        return cls(
            run_id=d["run_id"], units=tuple(units), totals=PlanTotals.from_dict(d["totals"]), seconds=d["seconds"]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "units": [u.to_dict() for u in self.units],
            "totals": self.totals.to_dict(),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class CompletionRecord:
    """A finished unit: its shard as the manifest will list it, the passes it holds and the engines."""

    unit: int
    run_id: str
    shard: ShardInfo
    engine: dict[str, Any]
    """The RL pass's engine description."""
    engine_base: dict[str, Any] | None
    """The base pass's engine description (must equal `engine`); None when the shard holds the RL pass only."""
    passes: Passes = "both"
    """The passes the shard holds: both (log-probs of both models and the weights) or rl."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionRecord:
        shard = ShardInfo(**_take(ShardInfo, data))
        fields_ = _take(cls, {"passes": "both", **data, "shard": shard})
        _shard_of(fields_["unit"], shard.file)
        if fields_["passes"] not in ("both", "rl") or (fields_["passes"] == "both") != (
            fields_["engine_base"] is not None
        ):
            raise ValueError(f"passes {fields_['passes']!r} does not fit engine_base")
        return cls(**fields_)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.shard.to_dict(),
            "unit": self.unit,
            "run_id": self.run_id,
            "engine": self.engine,
            "engine_base": self.engine_base,
            "passes": self.passes,
        }


__all__ = ["SPELLING_KEYS", "CompletionRecord", "Plan", "PlanTotals", "PlannedUnit", "RunDescription", "covers"]
