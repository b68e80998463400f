"""The output folder and its work folder ``OUTPUT/_work/``: the one module that knows their layout.

    OUTPUT/
      .remit-output               the ownership marker: remit writes only into a folder that carries it
      manifest.json               written last, by finalize: the output is complete
      shard-NNNNN.parquet         one per unit
      _work/
        run.json                  the run description (whose hash is the run id)
        plan.lock                 held while planning
        plan.json                 the units, written after every planned unit
        plan/unit-NNNNN.parquet   a unit's packed rows (token ids and segments)
        base/unit-NNNNN.npz       a unit's base log-probs, between the two scoring passes
        done/unit-NNNNN.json      a unit's completion record, written after its shard
        leases/unit-NNNNN.json    the worker scoring a unit now (`remit.annotate.lease`)
        logs/                     the local launcher's logs

`WorkDir` owns all of it:
- the ownership marker: an output folder is empty (then claimed) or remit's (it carries the marker), or
  refused; remit deletes and overwrites only files it creates, by their exact names;
- claiming the folder for a run, refusing another run's folder, and reopening a finished output whose
  shards are missing or damaged, or whose RL-only shards get their base pass (the repair path);
- the plan lock, and reading and writing the plan and its units;
- completion records, and whether one can be trusted;
- saved base log-probs;
- sweeping what a killed worker left, and removing the work folder after finalize;
- for an output written in one go (`remit-annotate pack`, no work folder): the finished-output check,
  stale shards and the manifest.

Every file is written with `remit.common.atomic`; nothing else in the package spells these paths.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remit import __version__
from remit.annotate.records import CompletionRecord, Plan, PlannedUnit, RunDescription, covers
from remit.common.atomic import atomic_path, leftovers, write_json_atomic
from remit.shards.checksum import file_sha256
from remit.shards.manifest import MANIFEST_NAME, OWNERSHIP_MARKER, WORK_FOLDER, Passes, ShardError
from remit.shards.schema import FORMAT_NAME
from remit.shards.writer import ShardInfo

WORK_DIR = WORK_FOLDER
RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
MARKER = OWNERSHIP_MARKER
MARKER_OWNER = "remit-annotate"
_UNIT = r"unit-\d{5,}"
#: The files remit creates under _work/, by folder (exact names: nothing else is ever deleted there).
_WORK_FILES = {
    "": re.compile(r"(run\.json|plan\.json|plan\.lock)"),
    "plan": re.compile(_UNIT + r"\.parquet"),
    "base": re.compile(_UNIT + r"\.npz"),
    "done": re.compile(_UNIT + r"\.json"),
    "leases": re.compile(_UNIT + r"\.json"),
    "logs": re.compile(r"(plan|worker-\d+)\.log"),
}
_SHARD = re.compile(r"shard-\d{5,}\.parquet")


_UNREADABLE_RUN = (
    "unreadable (empty or not JSON, e.g. after a machine crash). Delete it and rerun: this run's description "
    "is written again, and finished units are kept."
)


def shard_name(unit: int) -> str:
    return f"shard-{unit:05d}.parquet"


def unit_of(shard_file: str) -> int | None:
    """The unit a shard file name belongs to (None for another name)."""
    return int(shard_file[6:-8]) if _SHARD.fullmatch(shard_file) else None


def _is_ours(name: str, pattern: re.Pattern[str]) -> bool:
    """`name` is a file remit creates in that folder, or a temporary file of one."""
    base = re.sub(r"(\.\d+-[0-9a-f]{8})?\.tmp$", "", name)
    return pattern.fullmatch(base) is not None


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


@dataclass(frozen=True)
class Reopened:
    """What `claim` found wrong with a finished output, now reopened so that a worker finishes it again."""

    damaged: dict[int, str]
    """Unit -> why its shard cannot be trusted (missing, size, sha256)."""
    base_pass: bool
    """The output held only the RL pass and the base pass was asked for."""


def _unit_name(unit: int, suffix: str) -> str:
    return f"unit-{unit:05d}{suffix}"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable (e.g. empty after a node crash)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class WorkDir:
    """An annotation output folder and its work folder."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.manifest_path = self.output / MANIFEST_NAME
        self.marker_path = self.output / MARKER
        self.root = self.output / WORK_DIR
        self.run_path = self.root / RUN_FILE
        self.plan_path = self.root / PLAN_FILE
        self.plan_dir = self.root / "plan"
        self.done_dir = self.root / "done"
        self.base_dir = self.root / "base"
        self.leases_dir = self.root / "leases"
        self.logs_dir = self.root / "logs"
        self.reopened: Reopened | None = None
        """Set by `claim` when it reopened a finished output."""

    # -- paths -----------------------------------------------------------------------------------------

    def shard_path(self, unit: int) -> Path:
        return self.output / shard_name(unit)

    def unit_plan_path(self, unit: int) -> Path:
        return self.plan_dir / _unit_name(unit, ".parquet")

    def record_path(self, unit: int) -> Path:
        return self.done_dir / _unit_name(unit, ".json")

    def base_path(self, unit: int) -> Path:
        return self.base_dir / _unit_name(unit, ".npz")

    def lease_path(self, unit: int) -> Path:
        return self.leases_dir / _unit_name(unit, ".json")

    # -- ownership -------------------------------------------------------------------------------------

    def read_marker(self) -> dict[str, Any] | None:
        """The ownership marker's content when it is remit's, else None."""
        data = _read_json(self.marker_path)
        return data if data is not None and data.get("created_by") == MARKER_OWNER else None

    def _legacy_output(self) -> bool:
        """A folder written before the marker existed: a remit manifest or run description."""
        manifest = _read_json(self.manifest_path)
        return (manifest is not None and manifest.get("format") == FORMAT_NAME) or self.read_run_data() is not None

    def owned(self) -> bool:
        """The folder is remit's: it carries the marker (or is an output of a remit without markers)."""
        return self.read_marker() is not None or self._legacy_output()

    def _foreign_entries(self) -> list[str]:
        mine = {self.marker_path.name, *(p.name for p in leftovers(self.marker_path))}
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.output.iterdir() if p.name not in mine)

    def claim_folder(self) -> None:
        """Make the output folder remit's, or refuse it: remit writes only into an empty folder (or a new
        one) or one that carries its marker, so that it never deletes or overwrites a file it did not create."""
        out = self.output
        if out.exists() and not out.is_dir():
            raise ShardError(f"--output {out}: exists and is not a folder; choose a folder")
        if out.is_dir():
            # Listed before the marker is read: remit writes the marker before anything else and never removes
            # it, so entries listed while no marker existed are not remit's, whereas a worker started at the same
            # moment may claim the folder and create _work/ between these two reads.
            foreign = self._foreign_entries()
            if self.read_marker() is not None:
                return
            if self.marker_path.exists() and self.read_marker() is None:  # read again: it may have just appeared
                raise ShardError(
                    f"{self.marker_path}: not remit's ownership marker, so {out} is not remit's folder. Choose a new "
                    "--output folder."
                )
            if foreign and not self._legacy_output():
                shown = ", ".join(foreign[:5]) + (f" ... ({len(foreign)} entries)" if len(foreign) > 5 else "")
                raise ShardError(
                    f"--output {out}: the folder holds files remit did not create ({shown}); remit writes only into "
                    "an empty folder or one it created, so that it never deletes or overwrites your files. Choose a "
                    "new --output folder (it is created), or empty this one."
                )
        out.mkdir(parents=True, exist_ok=True)
        if self.read_marker() is None:  # another worker may have written it (with its run) meanwhile
            self._write_marker(None)

    def _write_marker(self, run: RunDescription | None) -> None:
        data: dict[str, Any] = {
            "created_by": MARKER_OWNER,
            "remit_version": __version__,
            "about": "This folder is an output of remit-annotate. remit writes only into folders that carry this "
            "file, and deletes or overwrites only files it created. Do not put other files here.",
        }
        previous = self.read_marker() or {}
        if run is None and "config" in previous:
            run_part = {k: previous[k] for k in ("run_id", "config") if k in previous}
        else:
            run_part = {"run_id": run.run_id, "config": run.config} if run is not None else {}
        write_json_atomic(self.marker_path, {**data, **run_part})

    # -- claiming the folder ---------------------------------------------------------------------------

    def claim(self, run: RunDescription, passes: Passes = "both") -> bool:
        """Claim the output folder for `run`, to hold `passes`. Returns True when the output is complete.

        A finished output is checked shard by shard (existence, size, sha256 against the manifest). When a
        shard is missing or damaged, or the output holds only the RL pass and `passes` asks for both, it
        is reopened (`self.reopened` says why): its intact shards get completion records again and the
        manifest is removed, so that the worker scores just what is missing and finalize writes it again.

        Raises ShardError when the folder is not remit's, or holds another run's output or unfinished work.
        """
        self.claim_folder()
        manifest = _read_json(self.manifest_path)
        if manifest is not None and (
            manifest.get("format") != FORMAT_NAME or not isinstance(manifest.get("shards"), list)
        ):
            manifest = None
        if manifest is None and self.manifest_path.exists():
            print(
                f"note: {self.manifest_path} is unreadable; it is removed and written again when the run is complete",
                file=sys.stderr,
                flush=True,
            )
            self.manifest_path.unlink(missing_ok=True)
        if manifest is not None:
            self._refuse_other_run(manifest, run, "the finished output")
            damaged = self.check_shards(manifest["shards"])
            have = manifest.get("passes", "both")
            if not damaged and covers(have, passes):
                return True
            self.root.mkdir(exist_ok=True)
            # Workers started together (a Slurm array) all find the damage; one reopens the output, the others
            # then find no manifest and resume like any unfinished run.
            with self.plan_lock():
                if self.manifest_path.exists():
                    self._reopen(manifest, run, damaged, base_pass=not covers(have, passes))
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.mkdir(exist_ok=True)
        stored = self.read_run_data()
        if stored is None:
            write_json_atomic(self.run_path, run.to_dict())
            self._write_marker(run)
        elif stored.get("run_id") != run.run_id:
            self._accept_model_change(stored, run)
        # Another run's worker may have raced us to an empty folder: whoever renamed last holds run.json.
        self._refuse_other_run(self.read_run_data() or {}, run, "the unfinished work")
        return False

    def read_run_data(self) -> dict[str, Any] | None:
        return _read_json(self.run_path) if self.run_path.exists() else None

    def finished_output(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """For an output written in one go (`remit-annotate pack`, whose run description is `run`): claim the
        folder (the ownership marker), and return its manifest when it already holds this run's finished
        output, None when there is none yet. Raises ShardError when the folder is not remit's, or holds another
        run's finished output or an annotation's unfinished work."""
        self.claim_folder()
        if self.manifest_path.exists():
            self._refuse_other_run(_read_json(self.manifest_path) or {}, run, "the finished output")
            return _read_json(self.manifest_path)
        if self.run_path.exists():
            raise ShardError(
                f"{self.run_path}: this output folder holds the unfinished work of an annotation run. Use a new "
                "--output folder, or delete this one to start over."
            )
        return None

    def remove_other_shards(self, keep: Collection[str]) -> None:
        """Remove shard files not named in `keep` (left by an earlier, longer unfinished run of the folder,
        which `finished_output` claimed as remit's)."""
        for stale in sorted(self.output.glob("shard-*.parquet")):
            if _SHARD.fullmatch(stale.name) and stale.name not in keep:
                stale.unlink()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest: the output is complete."""
        write_json_atomic(self.manifest_path, manifest)

    def read_run(self) -> RunDescription | None:
        """The run this folder was claimed for, or None when it holds no run.json."""
        if not self.run_path.exists():
            return None
        try:
            return RunDescription.from_dict(_read_json(self.run_path) or {})
        except (TypeError, ValueError):
            raise ShardError(f"{self.run_path}: {_UNREADABLE_RUN}") from None

    def _refuse_other_run(self, data: dict[str, Any], run: RunDescription | dict[str, Any], what: str) -> None:
        if not data:
            raise ShardError(f"{self.run_path}: {_UNREADABLE_RUN}")
        mine = run.to_dict() if isinstance(run, RunDescription) else run
        if data.get("run_id") == mine["run_id"]:
            return
        keys = ("config", "models", "tokenizer", "packing", "weights", "remit_version")
        changed = differences({k: data.get(k) for k in keys}, {k: mine.get(k) for k in keys})
        old_input = data.get("input") or {}
        changed += differences(
            {"input": {k: old_input.get(k) for k in ("paths", "fields")}},
            {"input": {k: mine["input"].get(k) for k in ("paths", "fields")}},
        )
        shown = "; ".join(changed[:4]) + (f"; ... ({len(changed)} in all)" if len(changed) > 4 else "")
        raise ShardError(
            f"{self.output}: this output folder holds {what} of a different run (run id {data.get('run_id')}, this "
            f"run's is {mine['run_id']}). What differs: {shown or 'the run description'}. Give the settings of that run, "
            "or use a new --output folder."
        )

    def _accept_model_change(self, stored: dict[str, Any], run: RunDescription) -> None:
        """A run whose only change is a model nothing was scored with yet stays this run: e.g. an RL model
        repaired after it failed to load keeps the base pass already made. Anything else is left for
        `_refuse_other_run`."""
        mine = run.to_dict()
        changed = differences(
            {k: v for k, v in stored.items() if k != "run_id"}, {k: v for k, v in mine.items() if k != "run_id"}
        )
        model_keys = ("config.base", "config.rl", "models.base", "models.rl")
        if not changed or not all(c.startswith(model_keys) for c in changed):
            return
        base_changed = any(c.startswith(("config.base", "models.base")) for c in changed)
        saved_base = any(self.base_dir.glob("unit-*.npz")) if self.base_dir.is_dir() else False
        if self.count_records() or (base_changed and saved_base):
            return  # scored work depends on the old model: refused, naming the change
        plan = self.read_plan()
        write_json_atomic(self.run_path, mine)
        if plan is not None:
            self.write_plan(Plan(run.run_id, plan.units, plan.totals, plan.seconds))
        self._write_marker(run)
        print(
            f"note: {self.output}: the {'base' if base_changed else 'RL'} model changed since this run started "
            "and nothing was scored with the old one yet; continuing with the new one"
            + ("" if base_changed or not saved_base else " (the saved base pass is kept)"),
            file=sys.stderr,
            flush=True,
        )

    def check_shards(self, entries: list[dict[str, Any]]) -> dict[int, str]:
        """Unit -> what is wrong with its shard (missing, size, sha256 against its manifest entry)."""
        damaged: dict[int, str] = {}
        fields = set(ShardInfo.__dataclass_fields__)
        for i, entry in enumerate(entries):
            path = self.output / str(entry.get("file"))
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

    def _reopen(self, manifest: dict[str, Any], run: RunDescription, damaged: dict[int, str], base_pass: bool) -> None:
        have = manifest.get("passes", "both")
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.mkdir(exist_ok=True)
        write_json_atomic(self.run_path, run.to_dict())
        self._write_marker(run)
        fields = {f for f in ShardInfo.__dataclass_fields__}
        for i, entry in enumerate(manifest["shards"]):
            if i in damaged:
                self.drop_record(i)
                continue
            shard = ShardInfo(**{k: entry[k] for k in fields})
            engine = manifest.get("engine") or {}
            self.write_record(
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
        self.manifest_path.unlink(missing_ok=True)
        self.reopened = Reopened(damaged, base_pass)
        for unit, why in sorted(damaged.items())[:20]:
            print(f"repair: unit {unit}: {why}; scoring it again", file=sys.stderr, flush=True)
        if base_pass:
            print(
                f"{self.output}: holds the RL pass only; scoring the base pass of its units and rewriting the shards",
                file=sys.stderr,
                flush=True,
            )

    # -- the plan --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def plan_lock(self) -> Iterator[None]:
        """Exclusive lock for planning, released by the kernel when the holder dies (so never stale).

        Only one process plans (rank 0 by protocol); the lock additionally keeps a `remit-annotate plan`
        and a rank-0 worker started together from rebuilding the plan under each other. Where the file
        system has no locks (some network mounts), planning proceeds without one.
        """
        import fcntl

        with open(self.root / "plan.lock", "a") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
            yield

    def read_plan(self, run_id: str | None = None) -> Plan | None:
        """The finished plan, or None when there is none yet. With `run_id`, refuse another run's plan."""
        if not self.plan_path.exists():
            return None
        data = _read_json(self.plan_path)
        try:
            plan = Plan.from_dict(data if data is not None else {})
        except (TypeError, ValueError) as e:
            raise ShardError(
                f"{self.plan_path}: unreadable ({e}); delete it and rerun (planning is deterministic and "
                "finished units are kept)"
            ) from None
        if run_id is not None and plan.run_id != run_id:
            raise ShardError(
                f"{self.plan_path}: planned for another run (run id {plan.run_id}, this run's is {run_id}). "
                f"Delete {self.root} to plan again; no finished unit can be reused."
            )
        return plan

    def start_plan(self) -> None:
        """An empty plan folder. Readers trust only plan.json, so units without it are an incomplete plan
        (its planner was killed) and are removed whole."""
        self.plan_dir.mkdir(parents=True, exist_ok=True)
        self._remove_ours(self.plan_dir, _WORK_FILES["plan"])

    def has_planned_unit(self, unit: int) -> bool:
        return self.unit_plan_path(unit).exists()

    def write_planned_unit(self, unit: int, table: pa.Table) -> None:
        # Flushed before the rename: plan.json, written later, must never point at a unit lost in a power failure.
        with atomic_path(self.unit_plan_path(unit)) as tmp:
            pq.write_table(table, tmp, compression="zstd")

    def write_plan(self, plan: Plan) -> None:
        write_json_atomic(self.plan_path, plan.to_dict())

    def read_planned_unit(self, unit: PlannedUnit) -> pa.Table:
        """A planned unit's rows, checked against the plan."""
        try:
            table = pq.read_table(self.unit_plan_path(unit.unit))
        except Exception as e:  # pyarrow raises several types for a truncated file
            raise ShardError(
                f"{self.plan_dir}: planned unit {unit.unit} is unreadable ({type(e).__name__}: {e}). "
                f"Delete {self.plan_path} and rerun: planning is deterministic and finished units are kept."
            ) from e
        if table.num_rows != unit.rows:
            raise ShardError(
                f"planned unit {unit.unit}: {table.num_rows} rows, plan.json says {unit.rows}; "
                f"delete {self.plan_path} and rerun"
            )
        return table

    # -- completion records ----------------------------------------------------------------------------

    def trusted_record(self, unit: PlannedUnit, run_id: str) -> tuple[CompletionRecord | None, str]:
        """The unit's completion record if it can be trusted, else None and the reason (empty: no record).

        Trusted means: it parses, it belongs to this run, its counts and token checksum agree with the plan,
        and its shard exists with the recorded size. The size check costs one stat; finalize and validate
        hash the full file.
        """
        path = self.record_path(unit.unit)
        if not path.exists():
            return None, ""
        data = _read_json(path)
        if data is None:
            return None, "its completion record is unreadable"
        if data.get("run_id") != run_id:
            return None, "its completion record belongs to another run"
        try:
            record = CompletionRecord.from_dict(data)
        except (TypeError, ValueError):
            return None, "its completion record is unreadable"
        for key in ("rows", "tokens", "first_sample_id", "token_checksum"):
            if getattr(record.shard, key) != getattr(unit, key):
                return (
                    None,
                    f"its completion record says {key} = {getattr(record.shard, key)}, the plan {getattr(unit, key)}",
                )
        shard = self.output / record.shard.file
        try:
            size = shard.stat().st_size
        except OSError:
            return None, f"its shard {shard.name} is missing"
        if size != record.shard.bytes:
            return None, f"its shard {shard.name} has {size} bytes, the record says {record.shard.bytes}"
        return record, ""

    def write_record(self, record: CompletionRecord) -> None:
        write_json_atomic(self.record_path(record.unit), record.to_dict())

    def drop_record(self, unit: int) -> None:
        self.record_path(unit).unlink(missing_ok=True)

    def count_records(self) -> int:
        return len(list(self.done_dir.glob("unit-*.json"))) if self.done_dir.is_dir() else 0

    # -- saved base log-probs --------------------------------------------------------------------------

    def save_base(self, unit: int, logp: np.ndarray, engine: str, model: str) -> None:
        """Save a unit's base log-probs with the (JSON) description of the engine that scored them and the
        weights hash of the base model."""
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        with atomic_path(self.base_path(unit)) as tmp, open(tmp, "wb") as f:
            np.savez(f, logp=logp, engine=np.array(engine), model=np.array(model))

    def load_base(self, unit: int, n_tokens: int, model: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Saved base log-probs and the engine that produced them, or None when unusable (then re-scored):
        unreadable, not one value per token, or scored by a base model other than `model` (weights hash)."""
        try:
            with np.load(self.base_path(unit)) as saved:
                logp, engine, scored_by = saved["logp"], json.loads(str(saved["engine"])), str(saved["model"])
        except Exception:  # truncated or empty after a machine crash: BadZipFile, EOFError, KeyError, ...
            return None
        if logp.dtype != np.float32 or logp.shape != (n_tokens,) or scored_by != model:
            return None
        return logp, engine

    def drop_base(self, unit: int) -> None:
        self.base_path(unit).unlink(missing_ok=True)

    # -- leftovers -------------------------------------------------------------------------------------

    def sweep_leftovers(self, units: Iterable[int], done: Collection[int]) -> None:
        """Remove what a killed worker may have left of these units: temporary files, and base log-probs of
        units that are complete with both passes (a crash between the completion record and the deletion).

        Only the given units are touched (the caller holds their leases): another worker may be writing its
        own temporary files right now.
        """
        for n in units:
            stale = [*leftovers(self.shard_path(n)), *leftovers(self.base_path(n)), *leftovers(self.record_path(n))]
            if n in done:
                stale.append(self.base_path(n))
            for p in stale:
                p.unlink(missing_ok=True)

    def finish(self, keep_work: bool) -> None:
        """After the manifest is written: remove remit's temporary files in the output folder, and the work
        folder unless `keep_work` (then only base log-probs a crash left behind: the shards hold them now).

        Only files remit creates are removed, by their exact names; a folder that still holds anything else
        afterwards is kept, and said so."""
        self._remove_ours(self.output, _SHARD, temporary_only=True)
        for p in leftovers(self.manifest_path) + leftovers(self.marker_path):
            p.unlink(missing_ok=True)
        if keep_work:
            self._remove_ours(self.base_dir, _WORK_FILES["base"])
            self._remove_ours(self.leases_dir, _WORK_FILES["leases"])
            return
        if not self.root.is_dir():
            return
        for sub, pattern in _WORK_FILES.items():
            folder = self.root / sub if sub else self.root
            self._remove_ours(folder, pattern)
            if sub:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        try:
            self.root.rmdir()
        except OSError:
            if self.root.exists():
                left = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))[:5]
                print(
                    f"note: kept {self.root}: it holds files remit did not create ({', '.join(left)})",
                    file=sys.stderr,
                    flush=True,
                )

    @staticmethod
    def _remove_ours(folder: Path, pattern: re.Pattern[str], temporary_only: bool = False) -> None:
        if not folder.is_dir():
            return
        for p in folder.iterdir():
            if p.is_file() and _is_ours(p.name, pattern) and (not temporary_only or p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)


__all__ = ["MARKER", "PLAN_FILE", "RUN_FILE", "WORK_DIR", "Reopened", "WorkDir", "differences", "shard_name", "unit_of"]
