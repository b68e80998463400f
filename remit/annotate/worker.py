"""One annotation worker: score this rank's units, base model first, then the RL model.

- Each model is loaded once per process.
- Pass 1 scores every pending unit with the base model and saves its log-probs in the work folder.
- Pass 2 loads the RL model, scores the same units, computes the weights, writes each shard (read
  back before its rename) and only then the unit's completion record.
- A rerun skips a unit only when its completion record can be trusted (`WorkDir.trusted_record`);
  anything else of a unit is scored again from scratch and overwritten, never appended to.
- Saved base log-probs are reused only when they hold one value per token and came from the same
  engine set-up as the RL pass; otherwise the base pass is redone.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from remit.annotate.config import AnnotateConfig
from remit.annotate.engines import Scorer, open_scorer
from remit.annotate.packing import unit_prompts
from remit.annotate.plan import describe_run, ensure_plan
from remit.annotate.progress import Progress
from remit.annotate.records import CompletionRecord, Plan, PlannedUnit
from remit.annotate.workdir import WorkDir
from remit.shards.faults import failpoint
from remit.shards.manifest import ShardError
from remit.shards.weights import remit_weights
from remit.shards.writer import Rows, build_table, write_shard

#: Timer keys that count as unit bookkeeping (markers, renames, checksums, leftovers), as opposed to
#: scoring, reading the planned units, computing weights or encoding the shard.
BOOKKEEPING_KEYS = ("bookkeeping",)


@dataclass
class WorkerStats:
    units_scored: int = 0
    """Units whose shard this worker wrote."""
    units_skipped: int = 0
    """Units of this rank that were already complete."""
    units_rescored: int = 0
    """Units whose completion record or saved base log-probs were not trusted and were scored again."""
    tokens: int = 0
    """Tokens in the units this worker scored."""
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


def _pending_units(work: WorkDir, mine: list[PlannedUnit], run_id: str, stats: WorkerStats) -> list[PlannedUnit]:
    pending, done = [], set()
    for u in mine:
        record, why = work.trusted_record(u, run_id)
        if record is not None:
            done.add(u.unit)
            continue
        if why:
            # The record promises a shard that is not there (or not this one): score the unit again.
            _log(f"unit {u.unit}: {why}; scoring it again")
            work.drop_record(u.unit)
            stats.units_rescored += 1
        pending.append(u)
    work.sweep_leftovers([u.unit for u in mine], done)
    return pending


def _base_pass(cfg: AnnotateConfig, work: WorkDir, units: list[PlannedUnit], rank: int, stats: WorkerStats) -> None:
    """Score `units` with the base model and save each unit's log-probs."""
    with _Timer(stats, "load_base"):
        scorer = open_scorer(cfg.engine, cfg.base, cfg.engine_settings())
    progress = Progress(f"rank {rank} base", total=sum(u.tokens for u in units), every_s=cfg.progress_every_s)
    describe = json.dumps(scorer.describe(), sort_keys=True)
    for u in units:
        with _Timer(stats, "io"):
            prompts = unit_prompts(work.read_planned_unit(u)).prompts
        with _Timer(stats, "score_base"):
            logp = score_flat(scorer, prompts, u.tokens)
        with _Timer(stats, "bookkeeping"):
            work.save_base(u.unit, logp, describe)
        failpoint("base-saved")
        progress.update(u.tokens)
    progress.close()
    with _Timer(stats, "load_base"):
        scorer.close()
        del scorer


def _rl_pass(
    cfg: AnnotateConfig,
    work: WorkDir,
    units: list[PlannedUnit],
    run_id: str,
    rank: int,
    stats: WorkerStats,
    fresh: set[int],
) -> list[PlannedUnit]:
    """Score `units` with the RL model, write their shards and completion records.

    `fresh` holds the units whose base pass ran in this process. Returns the units whose saved base
    log-probs (from an earlier process) turned out unusable: deleted, for the caller to redo.
    """
    with _Timer(stats, "load_rl"):
        scorer = open_scorer(cfg.engine, cfg.rl, cfg.engine_settings())
    describe_rl = scorer.describe()
    progress = Progress(f"rank {rank} rl", total=sum(u.tokens for u in units), every_s=cfg.progress_every_s)
    redo = []
    for u in units:
        with _Timer(stats, "io"):
            table = work.read_planned_unit(u)
            layout = unit_prompts(table)
        with _Timer(stats, "bookkeeping"):
            saved = work.load_base(u.unit, u.tokens)
        if saved is not None and saved[1] != describe_rl and u.unit in fresh:
            raise ShardError(
                f"the base and RL models were loaded with different engine set-ups (base: {saved[1]}; RL: "
                f"{describe_rl}). Their log-prob difference would mix two numerics; give both models the same "
                "dtype, vocabulary size and engine settings."
            )
        if saved is None or saved[1] != describe_rl:
            # Unreadable, or scored earlier by another engine version or set-up (a resume on other machines):
            # weights from two set-ups are not comparable, so the base pass is redone for this unit.
            why = "unreadable" if saved is None else f"from another engine set-up ({saved[1]})"
            _log(f"unit {u.unit}: saved base log-probs {why}; scoring the base pass again")
            work.drop_base(u.unit)
            redo.append(u)
            continue
        logp_base, describe_base = saved
        with _Timer(stats, "score_rl"):
            logp_rl = score_flat(scorer, layout.prompts, u.tokens)
        with _Timer(stats, "weights"):
            weight = remit_weights(logp_rl, logp_base, layout.lengths, layout.starts, eps=cfg.eps, center=cfg.center)
            rows = Rows(
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
            shard = build_table(rows, cfg.eps)
        failpoint("before-shard")
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
                CompletionRecord(unit=u.unit, run_id=run_id, shard=info, engine=describe_rl, engine_base=describe_base)
            )
            failpoint("after-done")
            work.drop_base(u.unit)
        stats.units_scored += 1
        stats.tokens += u.tokens
        progress.update(u.tokens)
    progress.close()
    with _Timer(stats, "load_rl"):
        scorer.close()
    return redo


def run_worker(cfg: AnnotateConfig, rank: int = 0, world_size: int = 1) -> tuple[WorkerStats, Plan | None]:
    """Score this rank's pending units (those with ``unit % world_size == rank``).

    Returns the stats and the plan (None when the output was already complete)."""
    stats = WorkerStats()
    t_start = time.perf_counter()
    work = WorkDir(cfg.output)
    with _Timer(stats, "prepare"):
        setup = describe_run(cfg)
        complete = work.claim(setup.run)
    if complete:
        return stats, None
    with _Timer(stats, "plan"):
        plan = ensure_plan(cfg, setup, rank)
    mine = [u for u in plan.units if u.unit % world_size == rank]
    with _Timer(stats, "bookkeeping"):
        pending = _pending_units(work, mine, setup.run.run_id, stats)
    stats.units_skipped = len(mine) - len(pending)
    # Normally one round. A second happens only when base log-probs saved by an earlier process prove
    # unusable in pass 2; the second round scores all of its units' base passes afresh, so it is the last.
    while pending:
        with _Timer(stats, "bookkeeping"):
            need_base = [u for u in pending if work.load_base(u.unit, u.tokens) is None]
        if need_base:
            _base_pass(cfg, work, need_base, rank, stats)
        redo = _rl_pass(cfg, work, pending, setup.run.run_id, rank, stats, fresh={u.unit for u in need_base})
        stats.units_rescored += len(redo)
        pending = redo
    stats.add_time("total", time.perf_counter() - t_start)
    return stats, plan


__all__ = ["BOOKKEEPING_KEYS", "WorkerStats", "run_worker", "score_flat"]
