"""Planning: the run's identity, and the corpus cut into deterministic work units.

- `describe_run`: the run description (whose hash is the run id), checked before any work starts.
- `build_plan`: the corpus read, tokenized and packed once (`remit.annotate.units`), written
  ``rows_per_shard`` rows per unit into the work folder; ``plan.json`` is written last, so a plan
  without it is incomplete and is redone from scratch.
- `ensure_plan`: rank 0 plans (under a lock) when there is no plan yet; the other ranks wait for it.
- Each function takes the job's `WorkDir`; none builds its own.

Sample ids and unit boundaries depend only on the inputs and the settings, never on the number of
workers, so any worker can score any unit and a resume with another world size gives the same output.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from remit import __version__
from remit.annotate.config import AnnotateConfig
from remit.annotate.hashcache import HashCache
from remit.annotate.inputs import Fields, InputScan
from remit.annotate.models import allow_long_vllm_rows, check_pair, check_positions, inspect_model, model_info
from remit.annotate.packing import PackedRow
from remit.annotate.progress import Progress
from remit.annotate.records import Plan, PlannedUnit, PlanTotals, RunDescription
from remit.annotate.tokenize import SpecialTokens, check_same_tokenizer, load_tokenizer
from remit.annotate.units import CorpusStats, corpus_units, input_description, open_corpus, packing_description
from remit.annotate.workdir import WorkDir, shard_name
from remit.shards.checksum import token_checksum
from remit.shards.manifest import ShardError
from remit.shards.schema import SCHEMA
from remit.shards.weights import RULE

#: The planned units hold the token-level layout of the final shards: the same columns, the same types.
PLAN_SCHEMA = pa.schema(
    [
        SCHEMA.field(n)
        for n in ("sample_id", "token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets", "source")
    ]
)


@dataclass(frozen=True)
class RunSetup:
    """What planning needs besides the config: the run's description, its tokenizer and BOS/EOS policy."""

    run: RunDescription
    tokenizer: Any
    """The base model's tokenizer (the RL model's is checked to be the same)."""
    special: SpecialTokens
    scan: InputScan
    """The inputs' sources in reading order, and the files of input folders that are not read."""

    def named_as(self, run: RunDescription | None) -> RunSetup:
        """This setup for `run` as its folder records it (`remit.annotate.claim.Claim.run`): its records
        named with the run's recorded input spellings."""
        if run is None:
            return self
        return replace(self, run=run, scan=self.scan.named(run.input_spellings()))


def _fields(cfg: AnnotateConfig) -> Fields:
    return Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field)


def describe_run(cfg: AnnotateConfig) -> RunSetup:
    """The run description (manifest fields known before scoring), the tokenizer and the BOS/EOS policy.

    Raises before any work starts on a bad model folder (config, weight headers and shapes, vocabulary,
    positions), a bad input path or a tokenizer mismatch.
    """
    cfg.check_paths()
    scan = open_corpus(cfg.inputs, cfg.output, _fields(cfg), cfg.split)
    tok_base, tok_rl = load_tokenizer(cfg.base), load_tokenizer(cfg.rl)
    tok_hash = check_same_tokenizer(tok_base, tok_rl, cfg.base, cfg.rl)
    special = SpecialTokens.resolve(tok_base, cfg.bos, cfg.eos)
    base, rl = inspect_model(cfg.base, "base"), inspect_model(cfg.rl, "rl")
    check_pair(base, rl, special.vocab_size)
    if any([check_positions(m, cfg.seq_len, cfg.engine) for m in (base, rl)]):
        allow_long_vllm_rows()
    for note in base.notes + rl.notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    cache = HashCache()
    models = {"base": model_info(cfg.base, cache), "rl": model_info(cfg.rl, cache)}
    cache.flush()
    run = RunDescription.create(
        remit_version=__version__,
        config=cfg.identity(),
        models=models,
        tokenizer={"sha256": tok_hash, "path": str(cfg.base.resolve()), **special.to_dict()},
        packing=packing_description(cfg.seq_len, cfg.rows_per_shard, scored=True),
        weights={"eps": cfg.eps, "center": cfg.center, "rule": RULE},
        engine_request={"name": cfg.engine, **cfg.engine_settings().to_dict()},
        input=input_description(scan, _fields(cfg)),
    )
    return RunSetup(run, tok_base, special, scan)


def _unit_table(rows: list[PackedRow], first_sample_id: int) -> pa.Table:
    def lists(values: list[list], type_: pa.DataType) -> pa.Array:
        return pa.array(values, type=pa.list_(type_))

    return pa.Table.from_arrays(
        [
            pa.array(np.arange(first_sample_id, first_sample_id + len(rows)), pa.int64()),
            pa.ListArray.from_arrays(
                pa.array(np.concatenate([[0], np.cumsum([len(r.tokens) for r in rows])]).astype(np.int32)),
                pa.array(np.concatenate([r.tokens for r in rows]), pa.int32()),
            ),
            lists([r.segment_starts for r in rows], pa.int32()),
            lists([r.segment_doc_ids for r in rows], pa.string()),
            lists([r.segment_doc_offsets for r in rows], pa.int64()),
            pa.array([r.source for r in rows], pa.string()),
        ],
        schema=PLAN_SCHEMA,
    )


def _planned(unit: int, rows: list[PackedRow], first_sample_id: int) -> PlannedUnit:
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    return PlannedUnit(
        unit=unit,
        file=shard_name(unit),
        first_sample_id=first_sample_id,
        rows=len(rows),
        tokens=int(lengths.sum()),
        token_checksum=token_checksum(lengths, np.concatenate([r.tokens for r in rows])),
    )


def _plan_units(
    cfg: AnnotateConfig, setup: RunSetup, work: WorkDir, write: Callable[[PlannedUnit], bool], quiet: bool = False
) -> tuple[list[PlannedUnit], CorpusStats]:
    """Tokenize and pack the whole corpus into units; write the rows of each unit for which `write` says so."""
    stats = CorpusStats()
    units: list[PlannedUnit] = []
    for got in corpus_units(
        setup.scan,
        _fields(cfg),
        setup.tokenizer,
        setup.special,
        seq_len=cfg.seq_len,
        rows_per_shard=cfg.rows_per_shard,
        strict=cfg.strict,
        stats=stats,
        progress=Progress("plan", unit="tok", every_s=cfg.progress_every_s),
        label=None if quiet else "plan",
    ):
        unit = _planned(got.unit, got.rows, got.first_sample_id)
        if write(unit):
            work.write_planned_unit(unit.unit, _unit_table(got.rows, unit.first_sample_id))
        units.append(unit)
    return units, stats


def build_plan(cfg: AnnotateConfig, setup: RunSetup, work: WorkDir) -> Plan:
    """Tokenize and pack the whole corpus into units; write plan.json last. Returns the plan.

    The rows of a unit whose shard is already complete (a trusted completion record, as after a repair
    reopened a finished output) are not written: only units still to score need them."""
    work.start_plan()
    run_id = setup.run.run_id
    t0 = time.perf_counter()
    units, stats = _plan_units(cfg, setup, work, lambda u: work.trusted_record(u, run_id)[0] is None)
    plan = Plan(
        run_id=run_id,
        units=tuple(units),
        totals=PlanTotals(**{**asdict(stats), "skipped": dict(sorted(stats.skipped.items()))}),
        seconds=round(time.perf_counter() - t0, 3),
    )
    work.write_plan(plan)
    return plan


def ensure_planned_units(
    cfg: AnnotateConfig, setup: RunSetup, work: WorkDir, plan: Plan, units: list[PlannedUnit]
) -> None:
    """Write the rows of `units` where planning left them out (their shards were complete then, and are
    not now): the corpus is planned again, deterministically, and checked against plan.json."""
    missing = {u.unit for u in units if not work.has_planned_unit(u.unit)}
    if not missing:
        return
    with work.plan_lock():
        missing = {n for n in missing if not work.has_planned_unit(n)}
        if not missing:
            return
        print(f"[plan] writing the rows of {len(missing)} units again", file=sys.stderr, flush=True)
        again, _ = _plan_units(cfg, setup, work, lambda u: u.unit in missing, quiet=True)
    if tuple(again) != plan.units:
        raise ShardError(
            f"{work.plan_path}: planning the inputs again gives other units than the plan; the inputs changed "
            f"since. Delete {work.plan_path} and run again (finished units that still match are kept)."
        )


def ensure_plan(cfg: AnnotateConfig, setup: RunSetup, work: WorkDir, rank: int) -> Plan:
    """Rank 0 plans when no plan exists; other ranks wait for it.

    Readers trust only plan.json, which build_plan writes last: a plan folder without it (rank 0 was
    killed while planning) is rebuilt from scratch by the next rank 0, and no rank reads it before.
    """
    run_id = setup.run.run_id
    plan = work.read_plan(run_id)
    if plan is not None:
        return plan
    if rank == 0:
        with work.plan_lock():
            plan = work.read_plan(run_id)  # another planner may have finished while we waited
            return plan if plan is not None else build_plan(cfg, setup, work)
    deadline = time.monotonic() + cfg.plan_timeout_s
    print(f"[rank {rank}] waiting for rank 0 to write the plan in {work.root}", file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        plan = work.read_plan(run_id)
        if plan is not None:
            return plan
    raise TimeoutError(
        f"no plan after {cfg.plan_timeout_s:.0f} s; is rank 0 running? Run `remit-annotate plan` with the same "
        "flags first, or rerun rank 0."
    )
