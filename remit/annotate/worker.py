"""One annotation worker: score this rank's units, base model first, then the RL model.

Each model is loaded once per process. Pass 1 scores every pending unit with the base model and
saves its log-probs under ``_work/base/`` (temporary name, then rename). Pass 2 loads the RL model,
scores the same units, computes the weights, writes each shard (temporary name, read-back check,
rename) and only then its completion record under ``_work/done/``.

A rerun skips a unit only when its completion record can be trusted: it belongs to this run, agrees
with the plan, and its shard exists with the recorded size. Anything else of a unit (a shard without a
record, a stale temporary file, a record whose shard is gone) is scored again from scratch and
overwritten, never appended to. A unit's saved base log-probs are reused only when they hold one value
per token and came from the same engine set-up as the RL pass; otherwise the base pass is redone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from remit.annotate.config import AnnotateConfig
from remit.annotate.engine import Scorer, open_scorer
from remit.annotate.plan import (
    PLAN_FILE,
    RUN_FILE,
    build_plan,
    describe_run,
    read_plan,
    read_unit,
    shard_name,
    work_dir,
)
from remit.annotate.progress import Progress
from remit.shards.atomic import atomic_path, leftovers, write_json_atomic
from remit.shards.faults import failpoint
from remit.shards.manifest import MANIFEST_NAME, ShardError
from remit.shards.weights import remit_weights
from remit.shards.writer import Rows, build_table, write_shard

#: Timer keys that count as unit bookkeeping (markers, renames, checksums, leftovers), as opposed to
#: scoring, reading the planned units, computing weights or encoding the shard.
BOOKKEEPING_KEYS = ("bookkeeping",)


@dataclass
class WorkerStats:
    units_scored: int = 0
    units_skipped: int = 0
    units_rescored: int = 0
    """Units whose completion record or saved base log-probs were not trusted and were scored again."""
    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds


class _Timer:
    def __init__(self, stats: WorkerStats, key: str) -> None:
        self.stats, self.key = stats, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stats.add_time(self.key, time.perf_counter() - self.t0)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- rank and world size ------------------------------------------------------------------------------


def _env_pair(env: dict[str, str], rank_key: str, size_key: str) -> tuple[int, int] | None:
    if rank_key in env and size_key in env:
        return int(env[rank_key]), int(env[size_key])
    return None


def rank_from_env(rank: int | None, world_size: int | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """This worker's rank and the world size: explicit values first, then the launcher's environment.

    Launchers nest, so the levels compose (outer index x inner size + inner index):
      * a Slurm array task (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) is the
        outer level;
      * inside it, torchrun (RANK of WORLD_SIZE) or else srun (SLURM_PROCID of SLURM_NTASKS) is the
        inner level. torchrun wins over srun because under `srun torchrun` SLURM_PROCID numbers the
        nodes while RANK already numbers every process.
    Nothing set: rank 0 of 1.
    """
    env = dict(os.environ if env is None else env)
    if rank is None or world_size is None:
        outer = None
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            outer = (
                int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)),
                int(env["SLURM_ARRAY_TASK_COUNT"]),
            )
        inner = _env_pair(env, "RANK", "WORLD_SIZE") or _env_pair(env, "SLURM_PROCID", "SLURM_NTASKS") or (0, 1)
        r, w = inner
        if outer is not None:
            r, w = outer[0] * inner[1] + inner[0], outer[1] * inner[1]
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} / world size {world_size}: need 0 <= rank < world size (check --rank/--world-size "
            "or the SLURM_ARRAY_TASK_*, SLURM_PROCID/SLURM_NTASKS, RANK/WORLD_SIZE environment)"
        )
    return rank, world_size


# -- files ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or unreadable (e.g. empty after a node crash)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def done_path(output: Path, unit: int) -> Path:
    return work_dir(output) / "done" / f"unit-{unit:05d}.json"


def base_path(output: Path, unit: int) -> Path:
    return work_dir(output) / "base" / f"unit-{unit:05d}.npz"


def _refuse_other_run(path: Path, run_id: str, what: str) -> None:
    data = _read_json(path)
    if data is None:
        raise ShardError(
            f"{path}: unreadable (empty or not JSON, e.g. after a machine crash). Delete it and rerun: this "
            "run's description is written again, and finished units are kept."
        )
    if data.get("run_id") != run_id:
        raise ShardError(
            f"{path}: this output folder holds {what} of a different run (run id {data.get('run_id')}, this "
            f"run's is {run_id}: inputs, models or settings differ). Use a new --output folder, or delete "
            "this one to start over."
        )


def prepare_output(cfg: AnnotateConfig, run: dict[str, Any]) -> bool:
    """Claim the output folder for this run. Returns True when the output is already complete."""
    out = Path(cfg.output)
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        _refuse_other_run(manifest, run["run_id"], "the finished output")
        return True
    work = work_dir(out)
    (work / "done").mkdir(parents=True, exist_ok=True)
    (work / "base").mkdir(exist_ok=True)
    run_file = work / RUN_FILE
    if run_file.exists():
        _refuse_other_run(run_file, run["run_id"], "the unfinished work")
    else:
        write_json_atomic(run_file, run)
        # Another run's worker may have raced us to an empty folder: whoever renamed last holds run.json.
        _refuse_other_run(run_file, run["run_id"], "the unfinished work")
    return False


# -- the plan -------------------------------------------------------------------------------------------


def _read_plan_checked(output: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    plan = read_plan(output)
    if plan is not None and plan.get("run_id") != run["run_id"]:
        raise ShardError(
            f"{work_dir(output) / PLAN_FILE}: planned for another run (run id {plan.get('run_id')}, this run's "
            f"is {run['run_id']}). Delete {work_dir(output)} to plan again; no finished unit can be reused."
        )
    return plan


@contextlib.contextmanager
def _plan_lock(work: Path) -> Iterator[None]:
    """Exclusive lock for planning, released by the kernel when the holder dies (so never stale).

    Only one process plans (rank 0 by protocol); the lock additionally keeps a `remit-annotate plan`
    and a rank-0 worker started together from rebuilding the plan under each other. Where the file
    system has no locks (some network mounts), planning proceeds without one.
    """
    import fcntl

    with open(work / "plan.lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
        yield


def ensure_plan(cfg: AnnotateConfig, run: dict[str, Any], tokenizer: Any, special: Any, rank: int) -> dict[str, Any]:
    """Rank 0 plans when no plan exists; other ranks wait for it.

    Readers trust only plan.json, which build_plan writes last: a plan folder without it (rank 0 was
    killed while planning) is rebuilt from scratch by the next rank 0, and no rank reads it before.
    """
    out = Path(cfg.output)
    plan = _read_plan_checked(out, run)
    if plan is not None:
        return plan
    if rank == 0:
        with _plan_lock(work_dir(out)):
            plan = _read_plan_checked(out, run)  # another planner may have finished while we waited
            return plan if plan is not None else build_plan(cfg, run, tokenizer, special)
    deadline = time.monotonic() + cfg.plan_timeout_s
    _log(f"[rank {rank}] waiting for rank 0 to write the plan in {work_dir(out)}")
    while time.monotonic() < deadline:
        time.sleep(2.0)
        plan = _read_plan_checked(out, run)
        if plan is not None:
            return plan
    raise TimeoutError(
        f"no plan after {cfg.plan_timeout_s:.0f} s; is rank 0 running? Run `remit-annotate plan` with the same "
        "flags first, or rerun rank 0."
    )


def _read_unit_checked(output: Path, unit: dict[str, Any]) -> pa.Table:
    try:
        table = read_unit(output, unit["unit"])
    except Exception as e:  # pyarrow raises several types for a truncated file
        raise ShardError(
            f"{work_dir(output) / 'plan'}: planned unit {unit['unit']} is unreadable ({type(e).__name__}: {e}). "
            f"Delete {work_dir(output) / PLAN_FILE} and rerun: planning is deterministic and finished units "
            "are kept."
        ) from e
    if table.num_rows != unit["rows"]:
        raise ShardError(
            f"planned unit {unit['unit']}: {table.num_rows} rows, plan.json says {unit['rows']}; "
            f"delete {work_dir(output) / PLAN_FILE} and rerun"
        )
    return table


# -- completion records and leftovers -------------------------------------------------------------------


def trusted_record(output: Path, unit: dict[str, Any], run_id: str) -> tuple[dict[str, Any] | None, str]:
    """The unit's completion record if it can be trusted, else None and the reason (empty: no record).

    Trusted means: it parses, it belongs to this run, its counts and token checksum agree with the plan,
    and its shard exists with the recorded size. The size check costs one stat; finalize and validate
    hash the full file.
    """
    path = done_path(output, unit["unit"])
    if not path.exists():
        return None, ""
    record = _read_json(path)
    if record is None:
        return None, "its completion record is unreadable"
    if record.get("run_id") != run_id:
        return None, "its completion record belongs to another run"
    for key in ("rows", "tokens", "first_sample_id", "token_checksum"):
        if record.get(key) != unit[key]:
            return None, f"its completion record says {key} = {record.get(key)}, the plan {unit[key]}"
    shard = Path(output) / str(record.get("file"))
    try:
        size = shard.stat().st_size
    except OSError:
        return None, f"its shard {shard.name} is missing"
    if size != record.get("bytes"):
        return None, f"its shard {shard.name} has {size} bytes, the record says {record.get('bytes')}"
    return record, ""


def _sweep_leftovers(output: Path, units: list[dict[str, Any]], done: set[int]) -> None:
    """Remove what a killed worker may have left of these units: temporary files, and base log-probs of
    units that are already complete (a crash between the completion record and the deletion).

    Only this rank's units are touched: another rank may be writing its own temporary files right now.
    """
    for u in units:
        n = u["unit"]
        stale = [
            *leftovers(Path(output) / shard_name(n)),
            *leftovers(base_path(output, n)),
            *leftovers(done_path(output, n)),
        ]
        if n in done:
            stale.append(base_path(output, n))
        for p in stale:
            p.unlink(missing_ok=True)


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    # A file object, not a name: np.savez would append ".npz" to the temporary name.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _load_base(path: Path, n_tokens: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Saved base log-probs and the engine that produced them, or None when unusable (then re-scored)."""
    try:
        with np.load(path) as saved:
            logp, engine = saved["logp"], json.loads(str(saved["engine"]))
    except Exception:  # truncated or empty after a machine crash: BadZipFile, EOFError, KeyError, ...
        return None
    if logp.dtype != np.float32 or logp.shape != (n_tokens,):
        return None
    return logp, engine


# -- scoring --------------------------------------------------------------------------------------------


def unit_prompts(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Flat tokens, row lengths, per-row segment starts, and the segment prompts in token order."""
    tokens = pc.list_flatten(table.column("token_ids")).to_numpy()
    lengths = pc.list_value_length(table.column("token_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = [np.asarray(s, np.int32) for s in table.column("segment_starts").to_pylist()]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    prompts = []
    for off, n, st in zip(offsets, lengths, starts):
        bounds = [*st.tolist(), int(n)]
        prompts.extend(tokens[off + a : off + b] for a, b in zip(bounds[:-1], bounds[1:]))
    return tokens, lengths, starts, prompts


def score_flat(scorer: Scorer, prompts: list[np.ndarray], n_tokens: int) -> np.ndarray:
    out = np.concatenate(scorer.score(prompts)).astype(np.float32, copy=False)
    if len(out) != n_tokens:
        raise RuntimeError(f"the engine returned {len(out)} log-probs for {n_tokens} tokens")
    return out


def _pending_units(out: Path, mine: list[dict[str, Any]], run_id: str, stats: WorkerStats) -> list[dict[str, Any]]:
    pending, done = [], set()
    for u in mine:
        record, why = trusted_record(out, u, run_id)
        if record is not None:
            done.add(u["unit"])
            continue
        if why:
            # The record promises a shard that is not there (or not this one): score the unit again.
            _log(f"unit {u['unit']}: {why}; scoring it again")
            done_path(out, u["unit"]).unlink(missing_ok=True)
            stats.units_rescored += 1
        pending.append(u)
    _sweep_leftovers(out, mine, done)
    return pending


def _base_pass(cfg: AnnotateConfig, out: Path, units: list[dict[str, Any]], rank: int, stats: WorkerStats) -> None:
    """Score `units` with the base model; save each unit's log-probs (temporary name, then rename)."""
    with _Timer(stats, "load_base"):
        scorer = open_scorer(cfg.engine, cfg.base, cfg.engine_settings())
    progress = Progress(f"rank {rank} base", total=sum(u["tokens"] for u in units), every_s=cfg.progress_every_s)
    describe = json.dumps(scorer.describe(), sort_keys=True)
    for u in units:
        with _Timer(stats, "io"):
            _, _, _, prompts = unit_prompts(_read_unit_checked(out, u))
        with _Timer(stats, "score_base"):
            logp = score_flat(scorer, prompts, u["tokens"])
        with _Timer(stats, "bookkeeping"):
            _save_npz_atomic(base_path(out, u["unit"]), logp=logp, engine=np.array(describe))
        failpoint("base-saved")
        progress.update(u["tokens"])
    progress.close()
    with _Timer(stats, "load_base"):
        scorer.close()
        del scorer


def _rl_pass(
    cfg: AnnotateConfig,
    out: Path,
    units: list[dict[str, Any]],
    run_id: str,
    rank: int,
    stats: WorkerStats,
    fresh: set[int],
) -> list[dict[str, Any]]:
    """Score `units` with the RL model, write their shards and completion records.

    `fresh` holds the units whose base pass ran in this process. Returns the units whose saved base
    log-probs (from an earlier process) turned out unusable: deleted, for the caller to redo.
    """
    with _Timer(stats, "load_rl"):
        scorer = open_scorer(cfg.engine, cfg.rl, cfg.engine_settings())
    describe_rl = scorer.describe()
    progress = Progress(f"rank {rank} rl", total=sum(u["tokens"] for u in units), every_s=cfg.progress_every_s)
    redo = []
    for u in units:
        bpath = base_path(out, u["unit"])
        with _Timer(stats, "io"):
            table = _read_unit_checked(out, u)
            tokens, lengths, starts, prompts = unit_prompts(table)
        with _Timer(stats, "bookkeeping"):
            saved = _load_base(bpath, u["tokens"])
        if saved is not None and saved[1] != describe_rl and u["unit"] in fresh:
            raise ShardError(
                f"the base and RL models were loaded with different engine set-ups (base: {saved[1]}; RL: "
                f"{describe_rl}). Their log-prob difference would mix two numerics; give both models the same "
                "dtype, vocabulary size and engine settings."
            )
        if saved is None or saved[1] != describe_rl:
            # Unreadable, or scored earlier by another engine version or set-up (a resume on other machines):
            # weights from two set-ups are not comparable, so the base pass is redone for this unit.
            why = "unreadable" if saved is None else f"from another engine set-up ({saved[1]})"
            _log(f"unit {u['unit']}: saved base log-probs {why}; scoring the base pass again")
            bpath.unlink(missing_ok=True)
            redo.append(u)
            continue
        logp_base, describe_base = saved
        with _Timer(stats, "score_rl"):
            logp_rl = score_flat(scorer, prompts, u["tokens"])
        with _Timer(stats, "weights"):
            weight = remit_weights(logp_rl, logp_base, lengths, starts, eps=cfg.eps, center=cfg.center)
            rows = Rows(
                sample_ids=table.column("sample_id").to_numpy(),
                row_lengths=lengths,
                token_ids=tokens,
                logp_base=logp_base,
                logp_rl=logp_rl,
                weight=weight,
                segment_starts=starts,
                segment_doc_ids=table.column("segment_doc_ids").to_pylist(),
                segment_doc_offsets=[np.asarray(s, np.int64) for s in table.column("segment_doc_offsets").to_pylist()],
                sources=table.column("source").to_pylist(),
            )
            shard = build_table(rows, cfg.eps)
        failpoint("before-shard")
        with _Timer(stats, "write"):
            info = write_shard(shard, out / shard_name(u["unit"]))
        if info.token_checksum != u["token_checksum"]:
            raise ShardError(
                f"{out / info.file}: token checksum differs from the plan's; the plan was altered. "
                f"Delete {work_dir(out) / PLAN_FILE} and rerun."
            )
        failpoint("after-shard")
        with _Timer(stats, "bookkeeping"):
            record = {
                **info.to_dict(),
                "unit": u["unit"],
                "run_id": run_id,
                "engine": describe_rl,
                "engine_base": describe_base,
            }
            write_json_atomic(done_path(out, u["unit"]), record)
            failpoint("after-done")
            bpath.unlink(missing_ok=True)
        stats.units_scored += 1
        stats.tokens += u["tokens"]
        progress.update(u["tokens"])
    progress.close()
    with _Timer(stats, "load_rl"):
        scorer.close()
    return redo


def run_worker(cfg: AnnotateConfig, rank: int = 0, world_size: int = 1) -> tuple[WorkerStats, dict[str, Any]]:
    """Score this rank's pending units (those with ``unit % world_size == rank``). Returns stats and plan."""
    stats = WorkerStats()
    t_start = time.perf_counter()
    with _Timer(stats, "prepare"):
        run, tokenizer, special = describe_run(cfg)
        complete = prepare_output(cfg, run)
    if complete:
        return stats, {"run_id": run["run_id"], "units": [], "totals": {}, "complete": True}
    with _Timer(stats, "plan"):
        plan = ensure_plan(cfg, run, tokenizer, special, rank)
    out = Path(cfg.output)
    mine = [u for u in plan["units"] if u["unit"] % world_size == rank]
    with _Timer(stats, "bookkeeping"):
        pending = _pending_units(out, mine, run["run_id"], stats)
    stats.units_skipped = len(mine) - len(pending)
    # Normally one round. A second happens only when base log-probs saved by an earlier process prove
    # unusable in pass 2; the second round scores all of its units' base passes afresh, so it is the last.
    while pending:
        with _Timer(stats, "bookkeeping"):
            need_base = [u for u in pending if _load_base(base_path(out, u["unit"]), u["tokens"]) is None]
        if need_base:
            _base_pass(cfg, out, need_base, rank, stats)
        redo = _rl_pass(cfg, out, pending, run["run_id"], rank, stats, fresh={u["unit"] for u in need_base})
        stats.units_rescored += len(redo)
        pending = redo
    stats.add_time("total", time.perf_counter() - t_start)
    return stats, plan
