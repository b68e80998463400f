"""`manifest.json`: what an output holds and how it was made.

The manifest holds no timestamps or host names, so two runs with the same inputs and settings produce
byte-identical manifests. Its keys are documented in `docs/format.md`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_args

from remit.shards.schema import FORMAT_NAME, FORMAT_VERSION
from remit.shards.weights import Center

MANIFEST_NAME = "manifest.json"
#: What to do about a shard that is missing, unreadable or changed after it was written (the one wording
#: every reader and `validate` use).
SHARD_FIX = (
    "restore the shard from a copy, or re-create it: if the output still has `_work/`, delete the shard and its "
    "`_work/done/unit-N.json` and run the same annotation command again; otherwise delete the whole output and "
    "run the annotation again"
)
REDO_SHARD = f"Fix: {SHARD_FIX}."


class ShardError(ValueError):
    """A shard or output folder is unreadable, inconsistent, or from another run. The message says which
    file (and row, where known) and what to do."""


@dataclass
class Manifest:
    """The parsed manifest. `data` is the JSON object; the properties name the parts tools rely on."""

    data: dict[str, Any] = field(default_factory=dict)

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    @property
    def seq_len(self) -> int:
        return int(self.data["packing"]["seq_len"])

    @property
    def eps(self) -> float:
        return float(self.data["weights"]["eps"])

    @property
    def center(self) -> Center:
        center = self.data["weights"]["center"]
        if center not in get_args(Center):
            raise ShardError(
                f"manifest.json: weights.center is {center!r}, not one of {get_args(Center)}; the manifest was "
                "altered or written by another program"
            )
        return cast(Center, center)

    @property
    def scored(self) -> bool:
        """False for a pack-only output: token ids only, every log-prob NaN and every weight 1.0."""
        return bool(self.data.get("scored", True))

    @property
    def tokenizer_hash(self) -> str:
        return str(self.data["tokenizer"]["sha256"])

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def total_rows(self) -> int:
        return int(self.data["totals"]["rows"])

    @property
    def total_tokens(self) -> int:
        return int(self.data["totals"]["tokens"])


def read_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise ShardError(
            f"{path}: missing. The output is not finished: run `remit-annotate finalize {root}` "
            "(or finish the annotation first)."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardError(f"{path}: not valid JSON ({e}); re-run `remit-annotate finalize {root}`.") from e
    if data.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: not a remit manifest (format={data.get('format')!r})")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ShardError(f"{path}: format_version {version!r} is not a version number; the manifest was altered.")
    if version > FORMAT_VERSION:
        raise ShardError(
            f"{path}: format version {data.get('format_version')} is newer than this remit "
            f"({FORMAT_VERSION}); upgrade remit."
        )
    for key in ("run_id", "shards", "packing", "weights", "tokenizer", "totals"):
        if key not in data:
            raise ShardError(f"{path}: key {key!r} missing; re-run `remit-annotate finalize {root}`.")
    return Manifest(data)


def assemble_manifest(run: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The final manifest: the run description plus the shard list (in sample order) and the totals.

    `run` holds ``run_id``, ``remit_version``, ``config``, ``models``, ``tokenizer``, ``engine``,
    ``packing``, ``weights`` and ``input`` (see docs/format.md); `shards` are `ShardInfo.to_dict()`s.
    """
    shards = sorted(shards, key=lambda s: s["first_sample_id"])
    totals = {
        "shards": len(shards),
        "rows": sum(int(s["rows"]) for s in shards),
        "tokens": sum(int(s["tokens"]) for s in shards),
        "bytes": sum(int(s["bytes"]) for s in shards),
    }
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **run, "shards": shards, "totals": totals}
