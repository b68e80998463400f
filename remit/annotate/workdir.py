"""The output folder and its work folder ``OUTPUT/_work/``: the one module that knows their layout.

    OUTPUT/
      manifest.json               written last, by finalize: the output is complete
      shard-NNNNN.parquet         one per unit
      _work/
        run.json                  the run description (whose hash is the run id)
        plan.lock                 held while planning
        plan.json                 the units, written after every planned unit
        plan/unit-NNNNN.parquet   a unit's packed rows (token ids and segments)
        base/unit-NNNNN.npz       a unit's base log-probs, between the two scoring passes
        done/unit-NNNNN.json      a unit's completion record, written after its shard
        logs/                     the local launcher's logs

`WorkDir` owns all of it:
- claiming the folder for a run, and refusing another run's folder;
- the plan lock, and reading and writing the plan and its units;
- completion records, and whether one can be trusted;
- saved base log-probs;
- sweeping what a killed worker left, and removing the work folder after finalize;
- for an output written in one go (`remit-annotate pack`, no work folder): the finished-output check,
  stale shards and the manifest.

Every file is written with `remit.shards.atomic`; nothing else in the package spells these paths.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remit.annotate.records import CompletionRecord, Plan, PlannedUnit, RunDescription
from remit.shards.atomic import TMP_SUFFIX, atomic_path, leftovers, write_json_atomic
from remit.shards.manifest import MANIFEST_NAME, ShardError

WORK_DIR = "_work"
RUN_FILE = "run.json"
PLAN_FILE = "plan.json"


_UNREADABLE_RUN = (
    "unreadable (empty or not JSON, e.g. after a machine crash). Delete it and rerun: this run's description "
    "is written again, and finished units are kept."
)


def shard_name(unit: int) -> str:
    return f"shard-{unit:05d}.parquet"


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
        self.root = self.output / WORK_DIR
        self.run_path = self.root / RUN_FILE
        self.plan_path = self.root / PLAN_FILE
        self.plan_dir = self.root / "plan"
        self.done_dir = self.root / "done"
        self.base_dir = self.root / "base"
        self.logs_dir = self.root / "logs"

    # -- paths -----------------------------------------------------------------------------------------

    def shard_path(self, unit: int) -> Path:
        return self.output / shard_name(unit)

    def unit_plan_path(self, unit: int) -> Path:
        return self.plan_dir / _unit_name(unit, ".parquet")

    def record_path(self, unit: int) -> Path:
        return self.done_dir / _unit_name(unit, ".json")

    def base_path(self, unit: int) -> Path:
        return self.base_dir / _unit_name(unit, ".npz")

    # -- claiming the folder ---------------------------------------------------------------------------

    def claim(self, run: RunDescription) -> bool:
        """Claim the output folder for `run`. Returns True when the output is already complete.

        Raises ShardError when the folder holds another run's finished output or unfinished work.
        """
        if self.manifest_path.exists():
            self._refuse_other_run(self.manifest_path, run.run_id, "the finished output")
            return True
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.mkdir(exist_ok=True)
        if not self.run_path.exists():
            write_json_atomic(self.run_path, run.to_dict())
        # Another run's worker may have raced us to an empty folder: whoever renamed last holds run.json.
        self._refuse_other_run(self.run_path, run.run_id, "the unfinished work")
        return False

    def finished_output(self, run_id: str) -> dict[str, Any] | None:
        """For an output written in one go (`remit-annotate pack`): its manifest when the folder already holds
        this run's finished output, None when there is none yet. Raises ShardError when the folder holds
        another run's finished output or an annotation's unfinished work."""
        if self.manifest_path.exists():
            self._refuse_other_run(self.manifest_path, run_id, "the finished output")
            return _read_json(self.manifest_path)
        if self.run_path.exists():
            raise ShardError(
                f"{self.run_path}: this output folder holds the unfinished work of an annotation run. Use a new "
                "--output folder, or delete this one to start over."
            )
        return None

    def remove_other_shards(self, keep: Collection[str]) -> None:
        """Remove shard files not named in `keep` (left by an earlier, longer unfinished run of the folder)."""
        for stale in sorted(self.output.glob("shard-*.parquet")):
            if stale.name not in keep:
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

    @staticmethod
    def _refuse_other_run(path: Path, run_id: str, what: str) -> None:
        data = _read_json(path)
        if data is None:
            raise ShardError(f"{path}: {_UNREADABLE_RUN}")
        if data.get("run_id") != run_id:
            raise ShardError(
                f"{path}: this output folder holds {what} of a different run (run id {data.get('run_id')}, this "
                f"run's is {run_id}: inputs, models or settings differ). Use a new --output folder, or delete "
                "this one to start over."
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
        if self.plan_dir.exists():
            shutil.rmtree(self.plan_dir)
        self.plan_dir.mkdir(parents=True)

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

    def save_base(self, unit: int, logp: np.ndarray, engine: str) -> None:
        """Save a unit's base log-probs with the (JSON) description of the engine that scored them."""
        # A file object, not a name: np.savez would append ".npz" to the temporary name.
        with atomic_path(self.base_path(unit)) as tmp, open(tmp, "wb") as f:
            np.savez(f, logp=logp, engine=np.array(engine))

    def load_base(self, unit: int, n_tokens: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Saved base log-probs and the engine that produced them, or None when unusable (then re-scored)."""
        try:
            with np.load(self.base_path(unit)) as saved:
                logp, engine = saved["logp"], json.loads(str(saved["engine"]))
        except Exception:  # truncated or empty after a machine crash: BadZipFile, EOFError, KeyError, ...
            return None
        if logp.dtype != np.float32 or logp.shape != (n_tokens,):
            return None
        return logp, engine

    def drop_base(self, unit: int) -> None:
        self.base_path(unit).unlink(missing_ok=True)

    # -- leftovers -------------------------------------------------------------------------------------

    def sweep_leftovers(self, units: Iterable[int], done: Collection[int]) -> None:
        """Remove what a killed worker may have left of these units: temporary files, and base log-probs of
        units that are already complete (a crash between the completion record and the deletion).

        Only the given units are touched: another rank may be writing its own temporary files right now.
        """
        for n in units:
            stale = [*leftovers(self.shard_path(n)), *leftovers(self.base_path(n)), *leftovers(self.record_path(n))]
            if n in done:
                stale.append(self.base_path(n))
            for p in stale:
                p.unlink(missing_ok=True)

    def finish(self, keep_work: bool) -> None:
        """After the manifest is written: remove temporary files in the output folder, and the work folder
        unless `keep_work` (then only base log-probs a crash left behind: the shards hold them now)."""
        for stray in self.output.glob("*" + TMP_SUFFIX):
            stray.unlink(missing_ok=True)
        if not keep_work:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            for orphan in self.base_dir.glob("unit-*.npz"):
                orphan.unlink(missing_ok=True)


__all__ = ["PLAN_FILE", "RUN_FILE", "WORK_DIR", "WorkDir", "shard_name"]
