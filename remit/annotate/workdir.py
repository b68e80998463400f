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

`WorkDir` owns the names, and reads and writes the files by them:
- the ownership marker, and which entries of the folder are not remit's (whether a run may use the
  folder is `remit.annotate.claim`'s decision);
- the run description, the manifest, and the files that record a job's settings;
- the plan lock, and reading and writing the plan and its units;
- completion records, and whether one can be trusted;
- saved base log-probs;
- the local launcher's log files;
- sweeping what a killed worker left, and removing the work folder after finalize (only files remit
  creates, by their exact names).

Every file is written with `remit.common.atomic`; nothing else in the package spells these paths.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remit import __version__
from remit.annotate.records import CompletionRecord, Plan, PlannedUnit, RunDescription
from remit.common.atomic import atomic_path, leftovers, write_json_atomic
from remit.common.listing import first_few
from remit.shards.manifest import MANIFEST_NAME, OWNERSHIP_MARKER, WORK_FOLDER, ShardError
from remit.shards.schema import FORMAT_NAME

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


UNREADABLE_RUN = (
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

    # -- paths -----------------------------------------------------------------------------------------

    def inside(self, path: Path) -> Path:
        """`path` (a file or folder of this output that remit is about to read or write), after checking that
        it stays inside the output folder: a symlink on the way that leads out is refused in one line."""
        try:
            real, top = path.resolve(), self.output.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise ShardError(f"{path}: cannot be resolved ({e}); delete it and run again") from None
        if real != top and top not in real.parents:
            raise ShardError(
                f"{path}: leads outside the output folder {self.output} (to {real}); remit reads and writes only "
                f"inside it. Fix: delete {path} (the link, not what it points to) and run the same command again"
            )
        return path

    def check_inside(self) -> None:
        """Refuse an output whose work folder, or a file or folder remit keeps in it, leads out of the output
        folder (see `inside`)."""
        for path in (
            self.manifest_path,
            self.root,
            self.run_path,
            self.plan_path,
            self.plan_dir,
            self.done_dir,
            self.base_dir,
            self.leases_dir,
            self.logs_dir,
        ):
            if path.is_symlink() or path.exists():
                self.inside(path)

    def _json(self, path: Path) -> dict[str, Any] | None:
        return _read_json(self.inside(path)) if path.exists() or path.is_symlink() else None

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

    def plan_log_path(self, folder: Path | None = None) -> Path:
        """The local launcher's log of the planning step, in `folder` (default: the work folder's logs/)."""
        return (self.logs_dir if folder is None else folder) / "plan.log"

    def worker_log_path(self, rank: int, folder: Path | None = None) -> Path:
        """The local launcher's log of worker `rank`, in `folder` (default: the work folder's logs/)."""
        return (self.logs_dir if folder is None else folder) / f"worker-{rank}.log"

    # -- ownership -------------------------------------------------------------------------------------

    def read_marker(self) -> dict[str, Any] | None:
        """The ownership marker's content when it is remit's, else None."""
        data = self._json(self.marker_path)
        return data if data is not None and data.get("created_by") == MARKER_OWNER else None

    def legacy_output(self) -> bool:
        """A folder written before the marker existed: a remit manifest or run description."""
        manifest = self._json(self.manifest_path)
        return (manifest is not None and manifest.get("format") == FORMAT_NAME) or self.read_run_data() is not None

    def owned(self) -> bool:
        """The folder is remit's: it carries the marker (or is an output of a remit without markers)."""
        return self.read_marker() is not None or self.legacy_output()

    def foreign_entries(self) -> list[str]:
        """The folder's entries but the marker (and its temporary files), folders with a trailing slash."""
        mine = {self.marker_path.name, *(p.name for p in leftovers(self.marker_path))}
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.output.iterdir() if p.name not in mine)

    def unknown_entries(self) -> list[str]:
        """The folder's entries remit never writes there (anything but the marker, the manifest, shards, their
        temporary files and the work folder), folders with a trailing slash."""
        ours = re.compile("|".join(re.escape(n) for n in (MARKER, MANIFEST_NAME)) + "|" + _SHARD.pattern)
        return sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in self.output.iterdir()
            if not (p.name == WORK_DIR and p.is_dir()) and not (p.is_file() and _is_ours(p.name, ours))
        )

    def write_marker(self, run: RunDescription | None) -> None:
        """Write the ownership marker, naming `run` (None keeps the run a previous marker named)."""
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

    # -- the run description and the manifest ----------------------------------------------------------

    def read_run_data(self) -> dict[str, Any] | None:
        return self._json(self.run_path)

    def read_run(self) -> RunDescription | None:
        """The run this folder was claimed for, or None when it holds no run.json."""
        if not self.run_path.exists():
            return None
        try:
            return RunDescription.from_dict(self._json(self.run_path) or {})
        except (TypeError, ValueError):
            raise ShardError(f"{self.run_path}: {UNREADABLE_RUN}") from None

    def write_run(self, run: RunDescription) -> None:
        write_json_atomic(self.run_path, run.to_dict())

    def read_manifest_data(self) -> dict[str, Any] | None:
        """The manifest's JSON object, or None when it is missing or unreadable (no format check)."""
        return self._json(self.manifest_path)

    def set_aside_manifest(self) -> Path:
        """Move the manifest into the work folder as ``manifest.json.unreadable`` (kept after finalize, which
        then says so); returns where it went."""
        self.root.mkdir(exist_ok=True)
        kept = self.inside(self.root / (MANIFEST_NAME + ".unreadable"))
        os.replace(self.manifest_path, kept)
        return kept

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest: the output is complete."""
        write_json_atomic(self.manifest_path, manifest)

    def recorded_settings(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The files that may record the job's settings, most complete first (the manifest, run.json, the
        ownership marker), with their JSON objects; missing or unreadable ones are left out."""
        for path in (self.manifest_path, self.run_path, self.marker_path):
            data = self._json(path)
            if data is not None:
                yield path, data

    def remove_other_shards(self, keep: Collection[str]) -> None:
        """Remove shard files not named in `keep` (left by an earlier, longer unfinished run of the folder,
        which `remit.annotate.claim.finished_output` claimed as remit's)."""
        removed = []
        for stale in sorted(self.output.glob("shard-*.parquet")):
            if _SHARD.fullmatch(stale.name) and stale.name not in keep:
                stale.unlink()
                removed.append(stale.name)
        if removed:
            print(
                f"note: removed from {self.output}: {first_few(removed, sep=', ')} (shards of an earlier run)",
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
        data = self._json(self.plan_path)
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
        path = self.inside(self.unit_plan_path(unit.unit))
        try:
            table = pq.read_table(path)
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
        if not path.exists() and not path.is_symlink():
            return None, ""
        data = self._json(path)
        if data is None:
            return None, "its completion record is unreadable"
        if data.get("run_id") != run_id:
            return None, "its completion record belongs to another run"
        try:
            record = CompletionRecord.from_dict(data)
        except (TypeError, ValueError) as e:
            return None, f"its completion record is unreadable ({e})"
        if record.unit != unit.unit:
            return None, f"its completion record is of unit {record.unit}"
        for key in ("rows", "tokens", "first_sample_id", "token_checksum"):
            if getattr(record.shard, key) != getattr(unit, key):
                return (
                    None,
                    f"its completion record says {key} = {getattr(record.shard, key)}, the plan {getattr(unit, key)}",
                )
        shard = self.inside(self.shard_path(unit.unit))
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

    def record_passes(self) -> set[str]:
        """The passes the completion records hold (both, rl), unreadable records left out."""
        found = set()
        for p in self.done_dir.glob("unit-*.json") if self.done_dir.is_dir() else []:
            data = self._json(p)
            if data is not None:
                found.add(data.get("passes", "both"))
        return found

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
        path = self.inside(self.base_path(unit))
        try:
            with np.load(path) as saved:
                logp, engine, scored_by = saved["logp"], json.loads(str(saved["engine"])), str(saved["model"])
        except Exception:  # truncated or empty after a machine crash: BadZipFile, EOFError, KeyError, ...
            return None
        if logp.dtype != np.float32 or logp.shape != (n_tokens,) or scored_by != model:
            return None
        return logp, engine

    def drop_base(self, unit: int) -> None:
        self.base_path(unit).unlink(missing_ok=True)

    def has_saved_base(self) -> bool:
        """Any unit's base log-probs are saved."""
        return any(self.base_dir.glob("unit-*.npz")) if self.base_dir.is_dir() else False

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


__all__ = ["MARKER", "PLAN_FILE", "RUN_FILE", "UNREADABLE_RUN", "WORK_DIR", "WorkDir", "shard_name", "unit_of"]
