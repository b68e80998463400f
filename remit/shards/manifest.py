"""`manifest.json`: what an output holds and how it was made.

The manifest holds no timestamps or host names, so two runs with the same inputs and settings produce
byte-identical manifests. Its keys are documented in `docs/format.md`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Literal, cast, get_args

from remit.shards.schema import FORMAT_NAME, FORMAT_VERSION
from remit.shards.weights import Center

MANIFEST_NAME = "manifest.json"
#: The file that marks a folder as an output of remit-annotate, and its work folder (`remit.annotate.workdir`).
OWNERSHIP_MARKER = ".remit-output"
WORK_FOLDER = "_work"
#: The scoring passes an output holds: both models (the weights are computed), the RL model only
#: (`remit-annotate --score rl`: log p_RL for `online` and `none` training, no weights yet), or none
#: (token ids only, `remit-annotate pack`).
Passes = Literal["both", "rl", "none"]


def repair_command(root: str | Path) -> str:
    """The command that re-scores an output's missing or damaged shards and writes its manifest again
    (and finishes an unfinished output), with the settings the output records."""
    return f"remit-annotate repair {shlex.quote(str(root))}"


#: What to do about a shard that is missing, unreadable or changed after it was written (the one wording
#: every reader and `validate` use; `redo_shard` names the output folder where it is known).
SHARD_FIX = (
    "run `remit-annotate repair OUTPUT` on the output folder that holds the shard: it checks every shard against "
    "the manifest, re-scores the missing or damaged ones and writes the manifest again"
)
REDO_SHARD = f"Fix: {SHARD_FIX}."


def redo_shard(root: str | Path) -> str:
    """`REDO_SHARD` for the output folder `root`."""
    return (
        f"Fix: run `{repair_command(root)}`: it checks every shard against the manifest, re-scores the missing or "
        "damaged ones and writes the manifest again."
    )


class ShardError(ValueError):
    """A shard or output folder is unreadable, inconsistent, or from another run. The message says which
    file (and row, where known) and what to do."""


def confined(root: str | Path, name: object, *, index: int | None = None) -> Path:
    """The path of the shard file `name` that the manifest of the output folder `root` lists, after checking
    that it stays inside the folder: a plain file name (no folder part, no ``..``, not absolute) that is not a
    symlink leading out of the folder (the folder itself may be a symlink). Every reader of a manifest's shard
    list goes through here; a manifest that names anything else is refused in one line."""
    root = Path(root)
    entry = f"shard entry {index} " if index is not None else "a shard entry "
    where = f"{root / MANIFEST_NAME}: {entry}names {name!r}"
    fix = (
        f"shard entries name files in the output folder itself (shard-NNNNN.parquet); the manifest was altered "
        f"or written by another program. Fix: run `{repair_command(root)}` to write it again from the folder's shards."
    )
    if not isinstance(name, str) or not name:
        raise ShardError(f"{where}, which is not a file name; {fix}")
    if "\0" in name or "/" in name or "\\" in name or name in (".", "..") or PureWindowsPath(name).drive:
        raise ShardError(f"{where}, a path that leads outside the output folder or into a subfolder; {fix}")
    path = root / name
    if path.is_symlink():
        target = path.resolve()
        if root.resolve() not in target.parents:
            raise ShardError(f"{where}, a symlink to {target}, outside the output folder; {fix}")
    return path


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
    def passes(self) -> Passes:
        """Which scoring passes the shards hold (outputs without the key hold both)."""
        value = self.data.get("passes")
        if value is None:
            return "none" if self.data.get("scored") is False else "both"
        if value not in get_args(Passes):
            raise ShardError(
                f"manifest.json: passes is {value!r}, not one of {get_args(Passes)}; the manifest was altered or "
                "written by another program"
            )
        return cast(Passes, value)

    @property
    def scored(self) -> bool:
        """False for a pack-only output (passes = none): token ids only, every log-prob NaN, every weight 1.0."""
        return self.passes != "none"

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


def is_output_folder(folder: str | Path) -> bool:
    """Whether `folder` is (or is becoming) an output of remit-annotate: it holds the ownership marker, a
    run's work folder, or a remit manifest."""
    folder = Path(folder)
    if (folder / OWNERSHIP_MARKER).exists() or (folder / WORK_FOLDER / "run.json").exists():
        return True
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def read_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        if not any((Path(root) / name).exists() for name in (OWNERSHIP_MARKER, WORK_FOLDER)):
            raise ShardError(
                f"{path}: missing, and {root} is no output of remit-annotate (no {OWNERSHIP_MARKER} or "
                f"{WORK_FOLDER}/): pass the --output folder of a `remit-annotate` run."
            )
        raise ShardError(
            f"{path}: missing: the output is not finished (or its manifest was removed). Run "
            f"`{repair_command(root)}` to finish it with the settings it was started with."
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardError(
            f"{path}: not valid JSON ({e}). Run `{repair_command(root)}`: it checks every shard and writes the "
            "manifest again."
        ) from e
    if not isinstance(data, dict):
        raise ShardError(f"{path}: not a JSON object. Run `{repair_command(root)}` to write the manifest again.")
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
            raise ShardError(f"{path}: key {key!r} missing. Run `{repair_command(root)}` to write the manifest again.")
    shards = data["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
        raise ShardError(f"{path}: 'shards' is not a list of objects. Run `{repair_command(root)}` to write it again.")
    for i, entry in enumerate(shards):
        confined(root, entry.get("file"), index=i)
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
