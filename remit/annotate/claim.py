"""Whether a run may continue in an output folder: the continuation policy over `WorkDir`'s files.

- `claim_folder`: a folder is new or empty (then it becomes remit's), carries remit's ownership
  marker, or is refused untouched: remit never deletes or overwrites a file it did not create.
- `claim`: the folder for one run. Another run's output or unfinished work is refused, naming what
  differs; a changed model that nothing was scored with yet is accepted; a finished output whose
  shards are missing or damaged, or that holds only the RL pass when both are asked for, is reopened.
  The answer is a `Claim`.
- `check_shards`: a finished output's shards against its manifest (existence, size, sha256).
- `finished_output`: the same questions for an output written in one go (`remit-annotate pack`).

Workers started together (a Slurm array) claim at the same moment: the reads below are ordered so
that a folder another worker is claiming is never mistaken for a stranger's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.annotate.records import SPELLING_KEYS, CompletionRecord, Plan, RunDescription, covers
from remit.annotate.workdir import UNREADABLE_RUN, WorkDir, shard_name, unit_of
from remit.common.listing import first_few
from remit.shards.checksum import file_sha256
from remit.shards.manifest import Passes, ShardError, repair_command
from remit.shards.schema import FORMAT_NAME
from remit.shards.validate import validate_output
from remit.shards.writer import ShardInfo

#: Parts of a run description that name its models: a change there alone may be accepted.
_MODEL_KEYS = ("config.base", "config.rl", "models.base", "models.rl")
#: Parts compared when another run's output is refused (the input by its paths and fields only).
_COMPARED = ("config", "models", "tokenizer", "packing", "weights", "remit_version")


@dataclass(frozen=True)
class Reopened:
    """What `claim` found wrong with a finished output, now reopened so that a worker finishes it again."""

    damaged: dict[int, str]
    """Unit -> why its shard cannot be trusted (missing, size, sha256)."""
    base_pass: bool
    """The output held only the RL pass and the base pass was asked for."""


@dataclass(frozen=True)
class Claim:
    """The answer of `claim`."""

    complete: bool
    """The output already holds what was asked (every shard checked against the manifest)."""
    reopened: Reopened | None = field(default=None)
    """Set when a finished output was reopened here."""
    run: RunDescription | None = field(default=None)
    """The run as this folder records it: the run claimed for, with the input spellings the folder's run
    description or manifest holds (they name the records; see `RunDescription.with_names_of`)."""


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, with both values (shortened), e.g. "config.eps: 0.2 -> 0.1"."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if old == new:
        return []

    def short(v: Any) -> str:
        text = json.dumps(v, sort_keys=True)
        return text if len(text) <= 80 else text[:77] + "..."

    return [f"{prefix}: {short(old)} -> {short(new)}"]


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the folder --------------------------------------------------------------------------------------------


def claim_folder(work: WorkDir) -> None:
    """Make the output folder remit's, or refuse it: remit writes only into an empty folder (or a new
    one) or one that carries its marker, so that it never deletes or overwrites a file it did not create."""
    out = work.output
    if out.exists() and not out.is_dir():
        raise ShardError(f"--output {out}: exists and is not a folder; choose a folder")
    if out.is_dir():
        # Listed before the marker is read: remit writes the marker before anything else and never removes
        # it, so entries listed while no marker existed are not remit's, whereas a worker started at the same
        # moment may claim the folder and create _work/ between these two reads.
        foreign = work.foreign_entries()
        if work.read_marker() is not None:
            _check_marker(work)
            return
        if work.marker_path.exists() and work.read_marker() is None:  # read again: it may have just appeared
            raise ShardError(
                f"{work.marker_path}: not remit's ownership marker, so {out} is not remit's folder. Choose a new "
                "--output folder."
            )
        if foreign and not work.legacy_output():
            shown = ", ".join(foreign[:5]) + (f" ... ({len(foreign)} entries)" if len(foreign) > 5 else "")
            raise ShardError(
                f"--output {out}: the folder holds files remit did not create ({shown}); remit writes only into "
                "an empty folder or one it created, so that it never deletes or overwrites your files. Choose a "
                "new --output folder (it is created), or empty this one."
            )
    out.mkdir(parents=True, exist_ok=True)
    if work.read_marker() is None:  # another worker may have written it (with its run) meanwhile
        work.write_marker(None)


def _check_marker(work: WorkDir) -> None:
    """Refuse a folder whose marker does not fit what it holds (a marker copied or planted into a folder of
    someone else's files): files remit never writes there, or a manifest that is not remit's or is of another
    run than the marker names. remit then deletes nothing."""
    marker = work.read_marker() or {}
    fix = (
        "remit deletes or overwrites only files it wrote, and this marker does not fit the folder, so nothing was "
        "touched. Choose a new --output folder, or move these files out of it"
    )
    unknown = work.unknown_entries()
    if unknown:
        raise ShardError(
            f"{work.marker_path}: the folder holds files remit does not write ({first_few(unknown)}); {fix}."
        )
    if not work.manifest_path.exists():
        return
    manifest = work.read_manifest_data()
    if manifest is None or manifest.get("format") != FORMAT_NAME or not isinstance(manifest.get("shards"), list):
        raise ShardError(
            f"{work.manifest_path}: not a manifest remit wrote (unreadable, or another format); {fix}. If it is "
            f"this output's damaged manifest, run `{repair_command(work.output)}`: it keeps the file in "
            f"{work.root.name}/ and writes the manifest again."
        )
    if "run_id" in marker and manifest.get("run_id") != marker["run_id"]:
        raise ShardError(
            f"{work.manifest_path}: of run {manifest.get('run_id')}, but {work.marker_path.name} names run "
            f"{marker['run_id']}; {fix}."
        )


def _set_aside_unreadable_manifest(work: WorkDir) -> None:
    """For `remit-annotate repair` of an output that is remit's in every other way (its marker, only files
    remit writes): a manifest that is not remit's (unreadable, another format) is kept in the work folder,
    with a note, and the output is written again. Nothing is deleted."""
    if not work.manifest_path.is_file() or work.read_marker() is None or work.unknown_entries():
        return
    data = work.read_manifest_data()
    if data is not None and data.get("format") == FORMAT_NAME and isinstance(data.get("shards"), list):
        return
    kept = work.set_aside_manifest()
    _note(f"note: {work.manifest_path} is not a manifest remit can read; moved to {kept} (kept), and written again")


# -- the folder for one run --------------------------------------------------------------------------------


def claim(work: WorkDir, run: RunDescription, passes: Passes = "both", deep: bool = False) -> Claim:
    """Claim the output folder for `run`, to hold `passes`.

    A finished output is checked shard by shard (existence, size, sha256 against the manifest; with
    `deep`, as `remit-annotate repair` asks, every check of `validate` too: a shard whose content the
    manifest records but that breaks the format or the weight rule is damaged as well). When a
    shard is missing or damaged, or the output holds only the RL pass and `passes` asks for both, it
    is reopened (`Claim.reopened` says why): its intact shards get completion records again and the
    manifest is removed, so that the worker scores just what is missing and finalize writes it again.

    Raises ShardError when the folder is not remit's, or holds another run's output or unfinished work.
    """
    if deep:
        _set_aside_unreadable_manifest(work)
    claim_folder(work)
    _check_marker(work)
    work.check_inside()
    manifest = _finished_manifest(work)
    run = run.with_names_of(manifest if manifest is not None else work.read_run_data())
    reopened = None
    if manifest is not None:
        _refuse_other_run(work, manifest, run, "the finished output")
        damaged = check_shards(work, manifest["shards"])
        rewrite = False
        if deep:
            found, rewrite = check_content(work)
            damaged = {**found, **damaged}
        have = manifest.get("passes", "both")
        if not damaged and not rewrite and covers(have, passes):
            return Claim(complete=True, run=run)
        run = _spellings_from_shards(work, manifest, run, damaged)
        work.root.mkdir(exist_ok=True)
        # Workers started together (a Slurm array) all find the damage; one reopens the output, the others
        # then find no manifest and resume like any unfinished run.
        with work.plan_lock():
            if work.manifest_path.exists():
                reopened = _reopen(work, manifest, run, damaged, base_pass=not covers(have, passes))
    work.done_dir.mkdir(parents=True, exist_ok=True)
    work.base_dir.mkdir(exist_ok=True)
    stored = work.read_run_data()
    if stored is None:
        work.write_run(run)
        work.write_marker(run)
    elif stored.get("run_id") != run.run_id:
        _accept_model_change(work, stored, run)
    # Another run's worker may have raced us to an empty folder: whoever renamed last holds run.json.
    _refuse_other_run(work, work.read_run_data() or {}, run, "the unfinished work")
    return Claim(complete=False, reopened=reopened, run=run)


def _finished_manifest(work: WorkDir) -> dict[str, Any] | None:
    """The manifest of a finished output, or None (`claim_folder` refused one that is not remit's)."""
    manifest = work.read_manifest_data()
    if manifest is not None and (manifest.get("format") != FORMAT_NAME or not isinstance(manifest.get("shards"), list)):
        return None
    return manifest


def finished_output(work: WorkDir, run: dict[str, Any]) -> dict[str, Any] | None:
    """For an output written in one go (`remit-annotate pack`, whose run description is `run`): claim the
    folder (the ownership marker), and return its manifest when it already holds this run's finished
    output, None when there is none yet. Raises ShardError when the folder is not remit's, or holds another
    run's finished output or an annotation's unfinished work."""
    claim_folder(work)
    if work.manifest_path.exists():
        _refuse_other_run(work, work.read_manifest_data() or {}, run, "the finished output")
        return work.read_manifest_data()
    if work.run_path.exists():
        raise ShardError(
            f"{work.run_path}: this output folder holds the unfinished work of an annotation run. Use a new "
            "--output folder, or delete this one to start over."
        )
    return None


def _refuse_other_run(work: WorkDir, data: dict[str, Any], run: RunDescription | dict[str, Any], what: str) -> None:
    if not data:
        raise ShardError(f"{work.run_path}: {UNREADABLE_RUN}")
    mine = run.to_dict() if isinstance(run, RunDescription) else run
    if data.get("run_id") == mine["run_id"]:
        return
    changed = differences({k: data.get(k) for k in _COMPARED}, {k: mine.get(k) for k in _COMPARED})
    old_input = data.get("input") or {}
    changed += differences(
        {"input": {k: old_input.get(k) for k in ("paths", "fields")}},
        {"input": {k: mine["input"].get(k) for k in ("paths", "fields")}},
    )
    shown = "; ".join(changed[:4]) + (f"; ... ({len(changed)} in all)" if len(changed) > 4 else "")
    raise ShardError(
        f"{work.output}: this output folder holds {what} of a different run (run id {data.get('run_id')}, this "
        f"run's is {mine['run_id']}). What differs: {shown or 'the run description'}. Give the settings of that run, "
        "or use a new --output folder."
    )


def _accept_model_change(work: WorkDir, stored: dict[str, Any], run: RunDescription) -> None:
    """A run whose only change is a model nothing was scored with yet stays this run: e.g. an RL model
    repaired after it failed to load keeps the base pass already made. Anything else is left for
    `_refuse_other_run`."""
    mine = run.to_dict()
    changed = differences(
        {k: v for k, v in stored.items() if k != "run_id"}, {k: v for k, v in mine.items() if k != "run_id"}
    )
    if not changed or not all(c.startswith(_MODEL_KEYS) for c in changed):
        return
    base_changed = any(c.startswith(("config.base", "models.base")) for c in changed)
    saved_base = work.has_saved_base()
    if work.count_records() or (base_changed and saved_base):
        return  # scored work depends on the old model: refused, naming the change
    plan = work.read_plan()
    work.write_run(run)
    if plan is not None:
        work.write_plan(Plan(run.run_id, plan.units, plan.totals, plan.seconds))
    work.write_marker(run)
    _note(
        f"note: {work.output}: the {'base' if base_changed else 'RL'} model changed since this run started "
        "and nothing was scored with the old one yet; continuing with the new one"
        + ("" if base_changed or not saved_base else " (the saved base pass is kept)")
    )


def _spelling_in(resolved: str, names: set[str]) -> str | None:
    """The spelling of the input path `resolved` that the source names `names` show: None when they name it
    by its resolved path (or not at all), else the longest relative spelling whose normal form ends the
    resolved path (``data/c.jsonl`` for /home/me/data/c.jsonl)."""
    bases = {n[: n.index("[")] if n.endswith("]") and "[" in n else n for n in names}
    if any(b == resolved or b.startswith(resolved + "/") for b in bases):
        return None
    best: tuple[int, str] | None = None
    for b in sorted(bases):
        if os.path.isabs(b):
            continue
        parts = PurePosixPath(b).parts
        for k in range(len(parts), 0, -1):
            spelled = str(PurePosixPath(*parts[:k]))
            norm = os.path.normpath(spelled)
            while norm.startswith("../"):
                norm = norm[3:]
            if norm not in ("", ".", "..") and resolved.endswith("/" + norm):
                if best is None or len(PurePosixPath(norm).parts) > best[0]:
                    best = (len(PurePosixPath(norm).parts), spelled)
                break
    return None if best is None else best[1]


def _spellings_from_shards(
    work: WorkDir, manifest: dict[str, Any], run: RunDescription, damaged: dict[int, str]
) -> RunDescription:
    """`run` with the input spellings read back from the intact shards' source names, for an output written
    before runs recorded them (no ``given`` in its manifest): a unit scored again is then named as its
    neighbours are. The spellings so found stay out of the manifest, as they were."""
    recorded = (manifest.get("input") or {}).get("paths")
    paths = run.input.get("paths")
    if (
        not isinstance(recorded, list)
        or not isinstance(paths, list)
        or any(isinstance(e, dict) and "given" in e for e in recorded)
    ):
        return run
    names: set[str] = set()
    for i in range(len(manifest["shards"])):
        if i in damaged:
            continue
        try:
            column = pq.read_table(work.inside(work.shard_path(i)), columns=["source"]).column("source")
        except Exception:  # unreadable: the content checks report it
            continue
        names.update(str(v) for v in pc.unique(column).to_pylist())
    found = [_spelling_in(str(e.get("path")), names) for e in paths]
    if not any(found):
        return run
    new = [
        {
            **{k: v for k, v in e.items() if k not in SPELLING_KEYS},
            **({"given": g, "given_inferred": True} if g else {}),
        }
        for e, g in zip(paths, found, strict=True)
    ]
    return dataclasses.replace(run, input={**run.input, "paths": new})


# -- a finished output, checked and reopened ---------------------------------------------------------------


def check_shards(work: WorkDir, entries: list[dict[str, Any]]) -> dict[int, str]:
    """Unit -> what is wrong with its shard (missing, size, sha256 against its manifest entry)."""
    damaged: dict[int, str] = {}
    fields = set(ShardInfo.__dataclass_fields__)
    for i, entry in enumerate(entries):
        path = work.output / str(entry.get("file"))
        if not fields <= set(entry):  # e.g. an entry of format version 1 (no column checksums)
            damaged[i] = f"its manifest entry lacks {', '.join(sorted(fields - set(entry)))}"
        elif entry.get("file") != shard_name(i):
            damaged[i] = f"the manifest lists {entry.get('file')!r} where {shard_name(i)} belongs"
        elif not path.exists():
            damaged[i] = f"{path.name} is missing"
        elif path.stat().st_size != entry.get("bytes"):
            damaged[i] = f"{path.name} has {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        elif file_sha256(path) != entry.get("file_sha256"):
            damaged[i] = f"{path.name} differs from what was written (sha256 mismatch)"
    return damaged


def check_content(work: WorkDir) -> tuple[dict[int, str], bool]:
    """What `validate` finds in a finished output that the size and sha256 checks do not: unit -> the
    first problem in its shard (one the manifest records, e.g. weights that do not follow from the
    stored log-probs), and whether the manifest itself is inconsistent (then it is written again).
    A file beside the shards that the manifest does not list is left to its owner."""
    damaged: dict[int, str] = {}
    rewrite = False
    listed = {str(work.output / shard_name(i)) for i in range(len((work.read_manifest_data() or {}).get("shards", [])))}
    for problem in validate_output(work.output):
        unit = unit_of(Path(problem.file).name)
        if problem.file in listed and unit is not None:
            damaged.setdefault(unit, f"{Path(problem.file).name}: {problem.message}")
        elif Path(problem.file).name == work.manifest_path.name:
            rewrite = True
    return damaged, rewrite


def _reopen(
    work: WorkDir, manifest: dict[str, Any], run: RunDescription, damaged: dict[int, str], base_pass: bool
) -> Reopened:
    have = manifest.get("passes", "both")
    work.done_dir.mkdir(parents=True, exist_ok=True)
    work.base_dir.mkdir(exist_ok=True)
    work.write_run(run)
    work.write_marker(run)
    fields = set(ShardInfo.__dataclass_fields__)
    engine = manifest.get("engine") or {}
    for i, entry in enumerate(manifest["shards"]):
        if i in damaged:
            work.drop_record(i)
            continue
        shard = ShardInfo(**{k: entry[k] for k in fields})
        work.write_record(
            CompletionRecord(
                unit=i,
                run_id=run.run_id,
                shard=shard,
                engine=engine,
                engine_base=engine if have == "both" else None,
                passes=have,
            )
        )
    # Removed last: until now a rerun finds the manifest and checks again; from now on, it resumes.
    work.manifest_path.unlink(missing_ok=True)
    _note(
        f"note: removed {work.manifest_path} (remit's, of run {run.run_id}); it is written again when the output is complete"
    )
    if damaged:
        listed = [f"unit {unit}: {why}" for unit, why in sorted(damaged.items())]
        _note(f"repair: {len(damaged)} units missing or damaged; scoring them again ({first_few(listed)})")
    if base_pass:
        _note(f"{work.output}: holds the RL pass only; scoring the base pass of its units and rewriting the shards")
    return Reopened(damaged, base_pass)


__all__ = [
    "Claim",
    "Reopened",
    "check_content",
    "check_shards",
    "claim",
    "claim_folder",
    "differences",
    "finished_output",
]
