"""One annotation worker: score this rank's units, base model first, then the RL model.

- Each model is loaded once per process, and only when a unit needs it.
- Pass 1 scores every pending unit with the base model and saves its log-probs in the work folder.
- Pass 2 loads the RL model, scores the same units, computes the weights, writes each shard (read
  back before its rename) and only then the unit's completion record.
- With ``--score rl`` there is no pass 1: the shards hold log p_RL, NaN base log-probs and weights of
  1.0. A later run with ``--score both`` scores the base pass of those units and rewrites their shards
  from the stored log p_RL (no RL model is loaded): the same bytes as a one-shot two-pass run.
- A rerun skips a unit only when its completion record can be trusted (`WorkDir.trusted_record`);
  anything else of a unit is scored again from scratch and overwritten, never appended to.
- Saved base log-probs are reused only when they hold one value per token, were scored by the same
  base model (weights hash) and came from the same engine set-up as the RL pass; otherwise the base
  pass is redone.
- Every unit is scored under its lease (`remit.annotate.lease`): a unit a live worker holds is left to
  it and reported.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from remit.annotate.claim import claim
from remit.annotate.config import AnnotateConfig
from remit.annotate.engines import Scorer, open_scorer
from remit.annotate.lease import Leases
from remit.annotate.packing import UnitPrompts, unit_prompts
from remit.annotate.plan import describe_run, ensure_plan, ensure_planned_units
from remit.annotate.progress import Progress
from remit.annotate.records import CompletionRecord, Plan, PlannedUnit, covers
from remit.annotate.workdir import WorkDir
from remit.common.faults import failpoint
from remit.common.listing import first_few
from remit.shards.checksum import file_sha256
from remit.shards.manifest import ShardError
from remit.shards.reader import read_shard
from remit.shards.weights import remit_weights
from remit.shards.writer import Rows, build_table, write_shard

#: Timer keys that count as unit bookkeeping (markers, renames, checksums, leftovers), as opposed to
#: scoring, reading the planned units, computing weights or encoding the shard.
BOOKKEEPING_KEYS = ("bookkeeping",)
#: Columns of a shard that hold its layout (everything the planned unit holds): read back when the base
#: pass completes an RL-only shard.
LAYOUT_COLUMNS = ["sample_id", "token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets", "source"]


@dataclass
class WorkerStats:
    units_scored: int = 0
    """Units whose shard this worker wrote."""
    units_skipped: int = 0
    """Units of this rank that were already complete."""
    units_rescored: int = 0
    """Units whose completion record or saved base log-probs were not trusted and were scored again."""
    tokens: int = 0
    """Tokens in the units whose shards this worker wrote."""
    tokens_base: int = 0
    """Tokens scored by the base model."""
    tokens_rl: int = 0
    """Tokens scored by the RL model."""
    busy: list[str] = field(default_factory=list)
    """Units left to another live worker that holds their lease, with who it is."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase (load, score, io, weights, write, bookkeeping, ...)."""

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


def score_flat(scorer: Scorer, prompts: list[np.ndarray], n_tokens: int) -> np.ndarray:
    """The prompts' log-probs as one flat float32 array of `n_tokens` values."""
    out = np.concatenate(scorer.score(prompts)).astype(np.float32, copy=False)
    if len(out) != n_tokens:
        raise RuntimeError(f"the engine returned {len(out)} log-probs for {n_tokens} tokens")
    return out


@dataclass(frozen=True)
class _Job:
    """A unit to finish: from scratch, or (with `rl_record`) its RL-only shard completed by the base pass."""

    unit: PlannedUnit
    rl_record: CompletionRecord | None = None


@dataclass
class _Context:
    cfg: AnnotateConfig
    work: WorkDir
    run_id: str
    base_model: str
    """The base model's weights hash: saved base log-probs are reused only when scored by it."""
    rank: int
    stats: WorkerStats
    leases: Leases


def _pending_units(ctx: _Context, mine: list[PlannedUnit]) -> tuple[list[_Job], set[int]]:
    """The jobs of this rank, and its units that are complete with both passes."""
    jobs: list[_Job] = []
    both: set[int] = set()
    untrusted: list[str] = []
    for u in mine:
        record, why = ctx.work.trusted_record(u, ctx.run_id)
        if record is not None:
            if record.passes == "both":
                both.add(u.unit)
            if covers(record.passes, ctx.cfg.score):
                continue
            jobs.append(_Job(u, rl_record=record))
            continue
        if why:
            # The record promises a shard that is not there (or not this one): score the unit again.
            untrusted.append(f"unit {u.unit}: {why}")
            ctx.work.drop_record(u.unit)
            ctx.stats.units_rescored += 1
        jobs.append(_Job(u))
    if untrusted:
        _log(f"{len(untrusted)} units are scored again ({first_few(untrusted)})")
    return jobs, both


def _take_leases(ctx: _Context, jobs: list[_Job]) -> list[_Job]:
    mine = []
    busy: list[str] = []
    for job in jobs:
        holder = ctx.leases.acquire(job.unit.unit, note=False)
        if holder is None:
            mine.append(job)
            continue
        busy.append(f"unit {job.unit.unit} ({holder.describe()})")
    gone, ctx.leases.taken_over = ctx.leases.taken_over, []
    if gone:
        _log(f"{len(gone)} units: taking over the leases of workers that are gone ({first_few(gone)})")
    if busy:
        _log(f"{len(busy)} units are being scored by another worker now; left to it: {first_few(busy)}")
        ctx.stats.busy += busy
    return mine


def _base_pass(ctx: _Context, jobs: list[_Job], read_layout: Callable[[_Job], pa.Table]) -> None:
    """Score the jobs' units with the base model and save each unit's log-probs."""
    cfg, stats = ctx.cfg, ctx.stats
    with _Timer(stats, "load_base"):
        scorer = open_scorer(cfg.engine, cfg.base, cfg.engine_settings())
    progress = Progress(f"rank {ctx.rank} base", total=sum(j.unit.tokens for j in jobs), every_s=cfg.progress_every_s)
    describe = json.dumps(scorer.describe(), sort_keys=True)
    for job in jobs:
        u = job.unit
        try:
            with _Timer(stats, "io"):
                prompts = unit_prompts(read_layout(job)).prompts
        except (_Damaged, ShardError):
            continue  # a damaged RL-only shard: the second pass finds it again and redoes the unit
        with _Timer(stats, "score_base"):
            logp = score_flat(scorer, prompts, u.tokens)
        stats.tokens_base += u.tokens
        with _Timer(stats, "bookkeeping"):
            ctx.work.save_base(u.unit, logp, describe, ctx.base_model)
        failpoint("base-saved")
        progress.update(u.tokens)
    progress.close()
    with _Timer(stats, "load_base"):
        scorer.close()
        del scorer


class _LazyScorer:
    """The RL model, loaded on first use (a base pass that completes RL-only shards needs none)."""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.scorer: Scorer | None = None

    def get(self) -> Scorer:
        if self.scorer is None:
            with _Timer(self.ctx.stats, "load_rl"):
                self.scorer = open_scorer(self.ctx.cfg.engine, self.ctx.cfg.rl, self.ctx.cfg.engine_settings())
        return self.scorer

    def close(self) -> None:
        if self.scorer is not None:
            with _Timer(self.ctx.stats, "load_rl"):
                self.scorer.close()
            self.scorer = None


def _rows(table: pa.Table, layout: UnitPrompts, logp_base: np.ndarray, logp_rl: np.ndarray, weight: np.ndarray) -> Rows:
    return Rows(
        sample_ids=table.column("sample_id").to_numpy(),
        row_lengths=layout.lengths,
        token_ids=layout.tokens,
        logp_base=logp_base,
        logp_rl=logp_rl,
        weight=weight,
        segment_starts=layout.starts,
        segment_doc_ids=table.column("segment_doc_ids").to_pylist(),
        segment_doc_offsets=[np.asarray(s, np.int64) for s in table.column("segment_doc_offsets").to_pylist()],
        sources=table.column("source").to_pylist(),
    )


def _stored_rl(ctx: _Context, job: _Job) -> tuple[pa.Table, np.ndarray]:
    """An RL-only shard's layout and log p_RL, checked against its completion record and the plan."""
    assert job.rl_record is not None
    path = ctx.work.inside(ctx.work.shard_path(job.unit.unit))
    if file_sha256(path) != job.rl_record.shard.file_sha256:
        raise _Damaged(f"its shard {path.name} differs from what was written (sha256 mismatch)")
    table = read_shard(path, expected=job.rl_record.shard.column_checksums, columns=[*LAYOUT_COLUMNS, "logp_rl"])
    logp_rl = pa.compute.list_flatten(table.column("logp_rl")).to_numpy().astype(np.float32, copy=False)
    return table, logp_rl


class _Damaged(Exception):
    pass


def _second_pass(ctx: _Context, jobs: list[_Job], fresh: set[int], rl: _LazyScorer) -> list[_Job]:
    """Finish each job: score it with the RL model (or take its stored log p_RL), compute the weights when
    both passes are asked for, write its shard and completion record.

    `fresh` holds the units whose base pass ran in this process. Returns the jobs whose saved base
    log-probs (from an earlier process) turned out unusable, or whose stored RL-only shard was damaged:
    their files deleted, for the caller to redo."""
    cfg, work, stats = ctx.cfg, ctx.work, ctx.stats
    both = cfg.score == "both"
    progress = Progress(
        f"rank {ctx.rank} {'rl' if both else 'rl only'}",
        total=sum(j.unit.tokens for j in jobs),
        every_s=cfg.progress_every_s,
    )
    redo: list[_Job] = []
    again: list[str] = []  # units scored again, with why: one line after the pass
    lost: list[str] = []  # units whose lease another worker took over
    for job in jobs:
        u = job.unit
        stored_rl: np.ndarray | None = None
        if job.rl_record is not None:
            try:
                with _Timer(stats, "io"):
                    table, stored_rl = _stored_rl(ctx, job)
            except (_Damaged, ShardError) as e:
                again.append(f"unit {u.unit}: {e}; both passes")
                work.drop_record(u.unit)
                work.drop_base(u.unit)
                stats.units_rescored += 1
                redo.append(_Job(u))
                continue
            describe_rl = job.rl_record.engine
        else:
            with _Timer(stats, "io"):
                table = work.read_planned_unit(u)
            describe_rl = rl.get().describe()
        layout = unit_prompts(table)
        saved = _saved_base(ctx, job, describe_rl, u.unit in fresh, again) if both else None
        if both and saved is None:
            redo.append(job)
            continue
        if stored_rl is not None:
            logp_rl = stored_rl
        else:
            with _Timer(stats, "score_rl"):
                logp_rl = score_flat(rl.get(), layout.prompts, u.tokens)
            stats.tokens_rl += u.tokens
        if _finish_unit(ctx, u, table, layout, logp_rl, describe_rl, saved):
            progress.update(u.tokens)
        else:
            lost.append(f"unit {u.unit}")
    progress.close()
    if again:
        _log(f"{len(again)} units are scored again ({first_few(again)})")
    if lost:
        _log(f"{len(lost)} units' leases were taken over by another worker; left to it: {first_few(lost)}")
    return redo


def _saved_base(
    ctx: _Context, job: _Job, describe_rl: dict[str, Any], fresh: bool, again: list[str]
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The unit's saved base log-probs if they can be paired with this RL pass, else None: then they are
    deleted, the unit's base pass is to be redone, and why is added to `again`. `fresh`: the base pass
    ran in this process, so a different engine set-up is a configuration error, not an old file."""
    u = job.unit
    with _Timer(ctx.stats, "bookkeeping"):
        saved = ctx.work.load_base(u.unit, u.tokens, ctx.base_model)
    if saved is not None and saved[1] != describe_rl and fresh:
        raise ShardError(
            f"the base and RL passes use different engine set-ups (base: {saved[1]}; RL: {describe_rl}). "
            "Their log-prob difference would mix two numerics; give both models the same dtype, "
            "vocabulary size and engine settings"
            + (
                ", and complete an RL-only output with the engine version and settings it was scored with."
                if job.rl_record is not None
                else "."
            )
        )
    if saved is None or saved[1] != describe_rl:
        # Unreadable, or scored earlier by another engine version or set-up (a resume on other machines):
        # weights from two set-ups are not comparable, so the base pass is redone for this unit.
        why = "unreadable" if saved is None else f"from another engine set-up ({saved[1]})"
        again.append(f"unit {u.unit}: saved base log-probs {why}; the base pass")
        ctx.work.drop_base(u.unit)
        ctx.stats.units_rescored += 1
        return None
    return saved


def _finish_unit(
    ctx: _Context,
    u: PlannedUnit,
    table: pa.Table,
    layout: UnitPrompts,
    logp_rl: np.ndarray,
    describe_rl: dict[str, Any],
    saved: tuple[np.ndarray, dict[str, Any]] | None,
) -> bool:
    """Compute the unit's weights (with `saved` base log-probs; without, an RL-only shard), write its shard
    and then its completion record. Returns False when its lease was lost to another worker (nothing
    written)."""
    cfg, work, stats = ctx.cfg, ctx.work, ctx.stats
    with _Timer(stats, "weights"):
        if saved is not None:
            logp_base, describe_base = saved
            weight = remit_weights(logp_rl, logp_base, layout.lengths, layout.starts, eps=cfg.eps, center=cfg.center)
        else:
            # RL pass only: no base log-probs and no weights yet (validate and the trainer know the layout).
            logp_base, describe_base = np.full(u.tokens, np.nan, np.float32), None
            weight = np.ones(u.tokens, np.float32)
        shard = build_table(_rows(table, layout, logp_base, logp_rl, weight), cfg.eps)
    failpoint("before-shard")
    if not ctx.leases.holds(u.unit):
        stats.busy.append(f"unit {u.unit}: lease taken over by another worker")
        return False
    with _Timer(stats, "write"):
        info = write_shard(shard, work.shard_path(u.unit))
    if info.token_checksum != u.token_checksum:
        raise ShardError(
            f"{work.output / info.file}: token checksum differs from the plan's; the plan was altered. "
            f"Delete {work.plan_path} and rerun."
        )
    failpoint("after-shard")
    with _Timer(stats, "bookkeeping"):
        work.write_record(
            CompletionRecord(
                unit=u.unit,
                run_id=ctx.run_id,
                shard=info,
                engine=describe_rl,
                engine_base=describe_base,
                passes="both" if saved is not None else "rl",
            )
        )
        failpoint("after-done")
        work.drop_base(u.unit)
        ctx.leases.release(u.unit)
    stats.units_scored += 1
    stats.tokens += u.tokens
    return True


def run_worker(
    cfg: AnnotateConfig, rank: int = 0, world_size: int = 1, work: WorkDir | None = None, deep: bool = False
) -> tuple[WorkerStats, Plan | None]:
    """Score this rank's pending units (those with ``unit % world_size == rank``) in `work` (default: the
    work folder of ``cfg.output``). `deep`: check a finished output's shards as `validate` does (see
    `remit.annotate.claim.claim`).

    Returns the stats and the plan (None when the output was already complete)."""
    stats = WorkerStats()
    t_start = time.perf_counter()
    work = WorkDir(cfg.output) if work is None else work
    with _Timer(stats, "prepare"):
        setup = describe_run(cfg)
        claimed = claim(work, setup.run, cfg.score, deep=deep)
        setup, complete = setup.named_as(claimed.run), claimed.complete
    if complete:
        return stats, None
    with _Timer(stats, "plan"):
        plan = ensure_plan(cfg, setup, work, rank)
    mine = [u for u in plan.units if u.unit % world_size == rank]
    run_id = setup.run.run_id
    with Leases(work, rank, cfg.lease_heartbeat_s, cfg.lease_stale_s) as leases:
        ctx = _Context(cfg, work, run_id, setup.run.models["base"]["weights_sha256"], rank, stats, leases)
        with _Timer(stats, "bookkeeping"):
            jobs, both = _pending_units(ctx, mine)
            stats.units_skipped = len(mine) - len(jobs)
            jobs = _take_leases(ctx, jobs)
            # Finished units are nobody's work any more; the others only under their lease.
            work.sweep_leftovers(sorted({j.unit.unit for j in jobs} | both), both)
        fresh_units = [j.unit for j in jobs if j.rl_record is None]
        if fresh_units:
            ensure_planned_units(cfg, setup, work, plan, fresh_units)

        def read_layout(job: _Job) -> pa.Table:
            return work.read_planned_unit(job.unit) if job.rl_record is None else _stored_rl(ctx, job)[0]

        rl = _LazyScorer(ctx)
        try:
            # Normally one round. Another happens only when base log-probs saved by an earlier process prove
            # unusable in pass 2 (or a stored RL-only shard is damaged); those units are then scored afresh.
            for round_ in range(4):
                if not jobs:
                    break
                if round_ == 3:
                    raise ShardError(
                        f"{work.base_dir}: the base log-probs of units {sorted(j.unit.unit for j in jobs)[:10]} were "
                        "saved and could not be read back three times; check that the file system is healthy"
                    )
                need_base: list[_Job] = []
                if cfg.score == "both":
                    with _Timer(stats, "bookkeeping"):
                        need_base = [
                            j for j in jobs if work.load_base(j.unit.unit, j.unit.tokens, ctx.base_model) is None
                        ]
                if need_base:
                    _base_pass(ctx, need_base, read_layout)
                redo = _second_pass(ctx, jobs, {j.unit.unit for j in need_base}, rl)
                if any(j.rl_record is None for j in redo):
                    ensure_planned_units(cfg, setup, work, plan, [j.unit for j in redo if j.rl_record is None])
                jobs = redo
        finally:
            rl.close()
    stats.add_time("total", time.perf_counter() - t_start)
    return stats, plan


__all__ = ["BOOKKEEPING_KEYS", "WorkerStats", "run_worker", "score_flat"]
