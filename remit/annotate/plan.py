"""Planning: the run's identity, and the corpus cut into deterministic work units.

Planning reads the inputs once, tokenizes them, packs the rows and writes them, ``rows_per_shard``
rows per unit, under ``OUTPUT/_work/plan/``. Sample ids and unit boundaries depend only on the
inputs and the settings, never on the number of workers, so any worker can score any unit and a
resume with another world size produces the same output. ``plan.json`` is written last: a plan
without it is incomplete and is redone from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remit import __version__
from remit.annotate.config import AnnotateConfig
from remit.annotate.inputs import Fields, Skip, check_columns, expand_inputs, fingerprint, read_inputs
from remit.annotate.packing import PackedRow, pack
from remit.annotate.progress import Progress
from remit.annotate.tokenize import SpecialTokens, check_same_tokenizer, load_tokenizer, tokenize_records
from remit.shards.atomic import atomic_path, write_json_atomic
from remit.shards.checksum import bytes_sha256, token_checksum
from remit.shards.schema import SCHEMA
from remit.shards.weights import RULE

WORK_DIR = "_work"
RUN_FILE = "run.json"
PLAN_FILE = "plan.json"
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


def work_dir(output: Path) -> Path:
    return Path(output) / WORK_DIR


def unit_plan_path(output: Path, unit: int) -> Path:
    return work_dir(output) / "plan" / f"unit-{unit:05d}.parquet"


def shard_name(unit: int) -> str:
    return f"shard-{unit:05d}.parquet"


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


def describe_run(cfg: AnnotateConfig) -> tuple[dict[str, Any], Any, SpecialTokens]:
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
    run = {
        "remit_version": __version__,
        "config": cfg.identity(),
        "models": models,
        "tokenizer": {"sha256": tok_hash, "path": str(cfg.base.resolve()), **special.to_dict()},
        "packing": {
            "seq_len": cfg.seq_len,
            "row_tokens": cfg.seq_len + 1,
            "rows_per_shard": cfg.rows_per_shard,
            "rows": "consecutive, non-overlapping windows of seq_len + 1 tokens of the EOS-joined corpus; "
            "the last row may be shorter",
            "first_token_logp": "NaN at the first token of every segment (no context); weight 1.0 there",
            "segment_context": "each segment scored as an independent prompt from its own first token",
        },
        "weights": {"eps": cfg.eps, "center": cfg.center, "rule": RULE},
        "engine_request": {"name": cfg.engine, **cfg.engine_settings().to_dict()},
        "input": {
            "paths": fingerprint(inputs),
            "fields": {"text": cfg.text_field, "id": cfg.id_field, "tokens": cfg.token_field},
        },
    }
    run["run_id"] = bytes_sha256(json.dumps(run, sort_keys=True).encode())
    return run, tok_base, special


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


def _write_unit(output: Path, unit: int, rows: list[PackedRow], first_sample_id: int) -> dict[str, Any]:
    path = unit_plan_path(output, unit)
    # Flushed before the rename: plan.json, written later, must never point at a unit lost in a power failure.
    with atomic_path(path) as tmp:
        pq.write_table(_unit_table(rows, first_sample_id), tmp, compression="zstd")
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    return {
        "unit": unit,
        "file": shard_name(unit),
        "first_sample_id": first_sample_id,
        "rows": len(rows),
        "tokens": int(lengths.sum()),
        "token_checksum": token_checksum(lengths, np.concatenate([r.tokens for r in rows])),
    }


def build_plan(cfg: AnnotateConfig, run: dict[str, Any], tokenizer, special: SpecialTokens) -> dict[str, Any]:
    """Tokenize and pack the whole corpus into units; write plan.json last. Returns the plan."""
    out = Path(cfg.output)
    plan_dir = work_dir(out) / "plan"
    if plan_dir.exists():
        shutil.rmtree(plan_dir)  # an incomplete earlier plan (plan.json is missing): redo it whole
    plan_dir.mkdir(parents=True)
    stats = PlanStats()
    fields = Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field)
    progress = Progress("plan", unit="tok", every_s=cfg.progress_every_s)
    units: list[dict[str, Any]] = []
    pending: list[PackedRow] = []

    def documents():
        for item in tokenize_records(read_inputs(expand_inputs(cfg.inputs), fields), tokenizer, special):
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
            units.append(_write_unit(out, len(units), pending, stats.rows - len(pending)))
            pending = []
    if pending:
        units.append(_write_unit(out, len(units), pending, stats.rows - len(pending)))
    if not units:
        raise ValueError(
            f"no usable documents in the inputs ({sum(stats.skipped.values())} records skipped: {stats.skipped}); "
            "check --text-field / --token-field"
        )
    stats.units = len(units)
    progress.close()
    plan = {
        "run_id": run["run_id"],
        "units": units,
        "totals": {
            "documents": stats.documents,
            "tokens": stats.tokens,
            "rows": stats.rows,
            "units": stats.units,
            "last_row_tokens": stats.last_row_tokens,
            "skipped": dict(sorted(stats.skipped.items())),
            "skip_examples": stats.skip_examples,
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json_atomic(work_dir(out) / PLAN_FILE, plan)
    return plan


def read_plan(output: Path) -> dict[str, Any] | None:
    path = work_dir(output) / PLAN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def read_unit(output: Path, unit: int) -> pa.Table:
    return pq.read_table(unit_plan_path(output, unit))
