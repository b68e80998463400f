"""One annotation worker: score this rank's units, base model first, then the RL model.

Each model is loaded once per process. Pass 1 scores every pending unit with the base model and
saves its log-probs under ``_work/base/`` (temporary name, then rename). Pass 2 loads the RL model,
scores the same units, computes the weights, writes each shard (temporary name, read-back check,
rename) and only then its completion record under ``_work/done/``. A rerun skips units with a
completion record; anything else of a unit is scored again from scratch and overwritten.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from remit.annotate.config import AnnotateConfig
from remit.annotate.engine import Scorer, open_scorer
from remit.annotate.plan import (
    RUN_FILE,
    build_plan,
    describe_run,
    read_plan,
    read_unit,
    shard_name,
    work_dir,
)
from remit.annotate.progress import Progress
from remit.shards.faults import failpoint
from remit.shards.manifest import MANIFEST_NAME, ShardError, write_json_atomic
from remit.shards.weights import remit_weights
from remit.shards.writer import Rows, build_table, write_shard


@dataclass
class WorkerStats:
    units_scored: int = 0
    units_skipped: int = 0
    tokens: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds


class _Timer:
    def __init__(self, stats: WorkerStats, key: str) -> None:
        self.stats, self.key = stats, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.stats.add_time(self.key, time.perf_counter() - self.t0)


def rank_from_env(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values first, then Slurm array jobs, srun, torchrun (RANK/WORLD_SIZE); default 0 of 1."""
    env = os.environ
    if rank is None or world_size is None:
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            r = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            w = int(env["SLURM_ARRAY_TASK_COUNT"])
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            r, w = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        elif "RANK" in env and "WORLD_SIZE" in env:
            r, w = int(env["RANK"]), int(env["WORLD_SIZE"])
        else:
            r, w = 0, 1
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world size {world_size}: need 0 <= rank < world size")
    return rank, world_size


def _refuse_other_run(path: Path, run_id: str, what: str) -> None:
    data = json.loads(path.read_text())
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
    return False


def ensure_plan(cfg: AnnotateConfig, run: dict[str, Any], tokenizer, special, rank: int) -> dict[str, Any]:
    """Rank 0 plans when no plan exists; other ranks wait for it."""
    plan = read_plan(cfg.output)
    if plan is not None:
        return plan
    if rank == 0:
        return build_plan(cfg, run, tokenizer, special)
    deadline = time.monotonic() + cfg.plan_timeout_s
    print(f"[rank {rank}] waiting for rank 0 to write the plan in {work_dir(cfg.output)}", flush=True)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        plan = read_plan(cfg.output)
        if plan is not None:
            return plan
    raise TimeoutError(
        f"no plan after {cfg.plan_timeout_s:.0f} s; is rank 0 running? Run `remit-annotate plan` with the same "
        "flags first, or rerun rank 0."
    )


def done_path(output: Path, unit: int) -> Path:
    return work_dir(output) / "done" / f"unit-{unit:05d}.json"


def base_path(output: Path, unit: int) -> Path:
    return work_dir(output) / "base" / f"unit-{unit:05d}.npz"


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


def _save_npz_atomic(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_worker(cfg: AnnotateConfig, rank: int = 0, world_size: int = 1) -> tuple[WorkerStats, dict[str, Any]]:
    """Score this rank's pending units. Returns the stats and the plan."""
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
    pending = [u for u in mine if not done_path(out, u["unit"]).exists()]
    stats.units_skipped = len(mine) - len(pending)
    if not pending:
        stats.add_time("total", time.perf_counter() - t_start)
        return stats, plan
    settings = cfg.engine_settings()
    total_tokens = sum(u["tokens"] for u in pending)

    # Pass 1: base model over every pending unit that has no saved base log-probs yet.
    need_base = [u for u in pending if not base_path(out, u["unit"]).exists()]
    if need_base:
        with _Timer(stats, "load_base"):
            scorer = open_scorer(cfg.engine, cfg.base, settings)
        progress = Progress(f"rank {rank} base", total=sum(u["tokens"] for u in need_base), every_s=cfg.progress_every_s)
        describe = json.dumps(scorer.describe(), sort_keys=True)
        for u in need_base:
            with _Timer(stats, "io"):
                _, _, _, prompts = unit_prompts(read_unit(out, u["unit"]))
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

    # Pass 2: RL model, weights, shard, completion record.
    with _Timer(stats, "load_rl"):
        scorer = open_scorer(cfg.engine, cfg.rl, settings)
    describe_rl = scorer.describe()
    progress = Progress(f"rank {rank} rl", total=total_tokens, every_s=cfg.progress_every_s)
    for u in pending:
        with _Timer(stats, "io"):
            table = read_unit(out, u["unit"])
            tokens, lengths, starts, prompts = unit_prompts(table)
            saved = np.load(base_path(out, u["unit"]))
            logp_base, describe_base = saved["logp"], json.loads(str(saved["engine"]))
        if len(logp_base) != u["tokens"]:
            raise ShardError(f"{base_path(out, u['unit'])}: {len(logp_base)} values for {u['tokens']} tokens; delete it")
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
            raise ShardError(f"{out / info.file}: token checksum differs from the plan's; the plan was altered")
        failpoint("after-shard")
        with _Timer(stats, "bookkeeping"):
            record = {**info.to_dict(), "unit": u["unit"], "run_id": run["run_id"],
                      "engine": describe_rl, "engine_base": describe_base}
            write_json_atomic(done_path(out, u["unit"]), record)
            failpoint("after-done")
            base_path(out, u["unit"]).unlink(missing_ok=True)
        stats.units_scored += 1
        stats.tokens += u["tokens"]
        progress.update(u["tokens"])
    progress.close()
    with _Timer(stats, "load_rl"):
        scorer.close()
    stats.add_time("total", time.perf_counter() - t_start)
    return stats, plan
