"""Planning: the run's identity, and the corpus cut into deterministic work units.

- `describe_run`: the run description (whose hash is the run id), checked before any work starts.
- `build_plan`: reads the inputs once, tokenizes them, packs the rows and writes them,
  ``rows_per_shard`` rows per unit, into the work folder; ``plan.json`` is written last, so a plan
  without it is incomplete and is redone from scratch.
- `ensure_plan`: rank 0 plans (under a lock) when there is no plan yet; the other ranks wait for it.

Sample ids and unit boundaries depend only on the inputs and the settings, never on the number of
workers, so any worker can score any unit and a resume with another world size gives the same output.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from remit import __version__
from remit.annotate.config import AnnotateConfig
from remit.annotate.inputs import Fields, Skip, check_columns, expand_inputs, fingerprint, read_inputs
from remit.annotate.packing import Document, PackedRow, pack
from remit.annotate.progress import Progress
from remit.annotate.records import Plan, PlannedUnit, PlanTotals, RunDescription
from remit.annotate.tokenize import SpecialTokens, check_same_tokenizer, load_tokenizer, tokenize_records
from remit.annotate.workdir import WorkDir, shard_name
from remit.shards.checksum import token_checksum
from remit.shards.schema import SCHEMA
from remit.shards.weights import RULE

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
#: The planned units hold the token-level layout of the final shards: the same columns, the same types.
PLAN_SCHEMA = pa.schema(
    [
        SCHEMA.field(n)
        for n in ("sample_id", "token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets", "source")
    ]
)


class StrictInputError(ValueError):
    pass


def model_info(model_dir: Path) -> dict[str, Any]:
    """Path, architecture and a content hash of the weight files (and config) of a model folder."""
    config = json.loads((model_dir / "config.json").read_text())
    h = hashlib.sha256()
    files = sorted(f for f in model_dir.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    for f in [model_dir / "config.json", *files]:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return {
        "path": str(model_dir.resolve()),
        "weights_sha256": "sha256:" + h.hexdigest(),
        "weight_files": [f.name for f in files],
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "model_type": config.get("model_type"),
        "vocab_size": config.get("vocab_size"),
        "torch_dtype": str(config.get("torch_dtype") or config.get("dtype")),
    }


@dataclass(frozen=True)
class RunSetup:
    """What planning needs besides the config: the run's description, its tokenizer and BOS/EOS policy."""

    run: RunDescription
    tokenizer: Any
    """The base model's tokenizer (the RL model's is checked to be the same)."""
    special: SpecialTokens


def describe_run(cfg: AnnotateConfig) -> RunSetup:
    """The run description (manifest fields known before scoring), the tokenizer and the BOS/EOS policy.

    Raises before any work starts on a bad model folder, bad input path or tokenizer mismatch.
    """
    cfg.check_paths()
    inputs = expand_inputs(cfg.inputs)
    check_columns(inputs, Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field))
    tok_base, tok_rl = load_tokenizer(cfg.base), load_tokenizer(cfg.rl)
    tok_hash = check_same_tokenizer(tok_base, tok_rl, cfg.base, cfg.rl)
    special = SpecialTokens.resolve(tok_base, cfg.bos, cfg.eos)
    models = {"base": model_info(cfg.base), "rl": model_info(cfg.rl)}
    for name in ("base", "rl"):
        v = models[name]["vocab_size"]
        if v is not None and v < special.vocab_size:
            raise ValueError(
                f"the {name} model's vocab_size ({v}) is smaller than its tokenizer's ({special.vocab_size}); "
                "the tokenizer does not belong to this model"
            )
    run = RunDescription.create(
        remit_version=__version__,
        config=cfg.identity(),
        models=models,
        tokenizer={"sha256": tok_hash, "path": str(cfg.base.resolve()), **special.to_dict()},
        packing={
            "seq_len": cfg.seq_len,
            "row_tokens": cfg.seq_len + 1,
            "rows_per_shard": cfg.rows_per_shard,
            "rows": "consecutive, non-overlapping windows of seq_len + 1 tokens of the EOS-joined corpus; "
            "the last row may be shorter",
            "first_token_logp": "NaN at the first token of every segment (no context); weight 1.0 there",
            "segment_context": "each segment scored as an independent prompt from its own first token",
        },
        weights={"eps": cfg.eps, "center": cfg.center, "rule": RULE},
        engine_request={"name": cfg.engine, **cfg.engine_settings().to_dict()},
        input={
            "paths": fingerprint(inputs),
            "fields": {"text": cfg.text_field, "id": cfg.id_field, "tokens": cfg.token_field},
        },
    )
    return RunSetup(run, tok_base, special)


@dataclass
class PlanStats:
    documents: int = 0
    tokens: int = 0
    rows: int = 0
    units: int = 0
    last_row_tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)

    def skip(self, s: Skip, strict: bool) -> None:
        if strict:
            raise StrictInputError(f"{s.where()}: {s.reason} (--strict; drop --strict to skip and count such records)")
        self.skipped[s.kind] = self.skipped.get(s.kind, 0) + 1
        if len(self.skip_examples) < 20:
            self.skip_examples.append(f"{s.where()}: {s.reason}")


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


def _write_unit(work: WorkDir, unit: int, rows: list[PackedRow], first_sample_id: int) -> PlannedUnit:
    work.write_planned_unit(unit, _unit_table(rows, first_sample_id))
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    return PlannedUnit(
        unit=unit,
        file=shard_name(unit),
        first_sample_id=first_sample_id,
        rows=len(rows),
        tokens=int(lengths.sum()),
        token_checksum=token_checksum(lengths, np.concatenate([r.tokens for r in rows])),
    )


def build_plan(cfg: AnnotateConfig, setup: RunSetup) -> Plan:
    """Tokenize and pack the whole corpus into units; write plan.json last. Returns the plan."""
    work = WorkDir(cfg.output)
    work.start_plan()
    stats = PlanStats()
    fields = Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field)
    progress = Progress("plan", unit="tok", every_s=cfg.progress_every_s)
    units: list[PlannedUnit] = []
    pending: list[PackedRow] = []

    def documents() -> Iterator[Document]:
        for item in tokenize_records(read_inputs(expand_inputs(cfg.inputs), fields), setup.tokenizer, setup.special):
            if isinstance(item, Skip):
                stats.skip(item, cfg.strict)
                continue
            stats.documents += 1
            stats.tokens += len(item.tokens)
            progress.update(len(item.tokens))
            yield item

    t0 = time.perf_counter()
    for row in pack(documents(), cfg.seq_len):
        pending.append(row)
        stats.rows += 1
        stats.last_row_tokens = len(row.tokens)
        if len(pending) == cfg.rows_per_shard:
            units.append(_write_unit(work, len(units), pending, stats.rows - len(pending)))
            pending = []
    if pending:
        units.append(_write_unit(work, len(units), pending, stats.rows - len(pending)))
    if not units:
        raise ValueError(
            f"no usable documents in the inputs ({sum(stats.skipped.values())} records skipped: {stats.skipped}); "
            "check --text-field / --token-field"
        )
    stats.units = len(units)
    progress.close()
    plan = Plan(
        run_id=setup.run.run_id,
        units=tuple(units),
        totals=PlanTotals(**{**asdict(stats), "skipped": dict(sorted(stats.skipped.items()))}),
        seconds=round(time.perf_counter() - t0, 3),
    )
    work.write_plan(plan)
    return plan


def ensure_plan(cfg: AnnotateConfig, setup: RunSetup, rank: int) -> Plan:
    """Rank 0 plans when no plan exists; other ranks wait for it.

    Readers trust only plan.json, which build_plan writes last: a plan folder without it (rank 0 was
    killed while planning) is rebuilt from scratch by the next rank 0, and no rank reads it before.
    """
    work = WorkDir(cfg.output)
    run_id = setup.run.run_id
    plan = work.read_plan(run_id)
    if plan is not None:
        return plan
    if rank == 0:
        with work.plan_lock():
            plan = work.read_plan(run_id)  # another planner may have finished while we waited
            return plan if plan is not None else build_plan(cfg, setup)
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
