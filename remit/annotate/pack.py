"""`remit-annotate pack`: a pack-only output, token ids in sequence-aligned shards and no scoring.

- Tokenize the corpus once with a tokenizer folder (no model is loaded), pack it into rows of exactly
  ``seq_len + 1`` tokens as the scored path does (same packer, same BOS/EOS policy, same shard schema),
  and write the shards and a manifest with ``"scored": false``.
- Every log-prob is NaN and every weight 1.0, so the shards read like any output, and
  `remit-train --weights none` trains on them: a vanilla baseline, or pre-training from scratch with
  `--init-config`, that costs no scoring. The weighted modes refuse such an output.
- The output is deterministic (byte-identical on a rerun). Packing is cheap, so there is no
  work-unit resume: a rerun over an unfinished folder writes every shard again; a finished folder of
  the same run is left as it is, and one of another run is refused.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from remit import __version__
from remit.annotate.inputs import Fields, InputError, Skip, check_columns, expand_inputs, fingerprint, read_inputs
from remit.annotate.packing import Document, PackedRow, pack
from remit.annotate.plan import StrictInputError, shard_name
from remit.annotate.tokenize import BOS_POLICIES, EOS_POLICIES, SpecialTokens, load_tokenizer, tokenize_records
from remit.shards.checksum import bytes_sha256
from remit.shards.manifest import MANIFEST_NAME, ShardError, assemble_manifest, write_json_atomic
from remit.shards.tokenizer_hash import tokenizer_hash
from remit.shards.writer import Rows, build_table, write_shard

#: The manifest's weight rule for a pack-only output.
PACK_RULE = "none: pack-only output, not scored; every log-prob is NaN and every weight 1.0"


@dataclass
class PackConfig:
    tokenizer: Path
    """Folder holding the tokenizer files (a model folder works: only the tokenizer is loaded)."""
    inputs: list[Path]
    """Corpus: JSONL (plain/gzip), Parquet, folders of .txt, or `datasets` save_to_disk folders."""
    output: Path
    """Output folder: manifest.json + shard-NNNNN.parquet."""
    seq_len: int = 4096
    """Training sequence length; rows hold seq_len + 1 tokens."""
    rows_per_shard: int = 2048
    """Rows per shard."""
    text_field: str = "text"
    """Field or column holding the text."""
    id_field: str = "id"
    """Field holding the document id (absent: '<file>:<record>')."""
    token_field: str | None = None
    """Pre-tokenized input: the field with token ids, used as they are."""
    bos: str = "auto"
    """Prepend BOS to each document: auto (as the tokenizer's template does), always or never."""
    eos: str = "always"
    """Append EOS to each document: always or never."""
    strict: bool = False
    """Fail on the first unusable record instead of skipping and counting it."""

    def __post_init__(self) -> None:
        self.tokenizer, self.output = Path(self.tokenizer), Path(self.output)
        self.inputs = [Path(p) for p in self.inputs]
        if self.seq_len < 1:
            raise ValueError(f"seq_len: must be >= 1, got {self.seq_len}; pass --seq-len N")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard: must be >= 1, got {self.rows_per_shard}; pass --rows-per-shard N")
        if self.bos not in BOS_POLICIES:
            raise ValueError(f"bos: {self.bos!r} is not one of {BOS_POLICIES}")
        if self.eos not in EOS_POLICIES:
            raise ValueError(f"eos: {self.eos!r} is not one of {EOS_POLICIES}")
        if not self.inputs:
            raise ValueError("inputs: give at least one input path (--input)")
        if not self.tokenizer.is_dir():
            raise ValueError(f"--tokenizer {self.tokenizer}: no such folder; pass a folder with the tokenizer files")
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"--output {self.output}: exists and is not a folder")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokenizer"] = str(self.tokenizer.resolve())
        d["inputs"] = [str(p.resolve()) for p in self.inputs]
        for local in ("output", "strict"):
            d.pop(local)
        return d


@dataclass
class PackStats:
    documents: int = 0
    tokens: int = 0
    rows: int = 0
    last_row_tokens: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)


def _unscored_rows(rows: list[PackedRow], first_sample_id: int) -> Rows:
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    tokens = np.concatenate([r.tokens for r in rows]).astype(np.int32)
    nan = np.full(len(tokens), np.nan, np.float32)
    return Rows(
        sample_ids=np.arange(first_sample_id, first_sample_id + len(rows), dtype=np.int64),
        row_lengths=lengths,
        token_ids=tokens,
        logp_base=nan,
        logp_rl=nan.copy(),
        weight=np.ones(len(tokens), np.float32),
        segment_starts=[np.asarray(r.segment_starts, np.int32) for r in rows],
        segment_doc_ids=[list(r.segment_doc_ids) for r in rows],
        segment_doc_offsets=[np.asarray(r.segment_doc_offsets, np.int64) for r in rows],
        sources=[r.source for r in rows],
    )


def _describe(cfg: PackConfig, tokenizer: Any, special: SpecialTokens, inputs: list[Path]) -> dict[str, Any]:
    run: dict[str, Any] = {
        "remit_version": __version__,
        "scored": False,
        "config": cfg.identity(),
        "models": {},
        "engine": None,
        "tokenizer": {"sha256": tokenizer_hash(tokenizer), "path": str(cfg.tokenizer.resolve()), **special.to_dict()},
        "packing": {
            "seq_len": cfg.seq_len,
            "row_tokens": cfg.seq_len + 1,
            "rows_per_shard": cfg.rows_per_shard,
            "rows": "consecutive, non-overlapping windows of seq_len + 1 tokens of the EOS-joined corpus; "
            "the last row may be shorter",
            "first_token_logp": "not scored: every log-prob is NaN",
            "segment_context": "each segment is its own document part (document-masked attention in training)",
        },
        "weights": {"eps": 0.0, "center": "row", "rule": PACK_RULE},
        "input": {
            "paths": fingerprint(inputs),
            "fields": {"text": cfg.text_field, "id": cfg.id_field, "tokens": cfg.token_field},
        },
    }
    run["run_id"] = bytes_sha256(json.dumps(run, sort_keys=True).encode())
    return run


def pack_output(cfg: PackConfig, progress_every_s: float = 10.0) -> dict[str, Any]:
    """Tokenize, pack and write a pack-only output; return its manifest (written last)."""
    inputs = expand_inputs(cfg.inputs)
    fields = Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field)
    check_columns(inputs, fields)
    tokenizer = load_tokenizer(cfg.tokenizer)
    special = SpecialTokens.resolve(tokenizer, cfg.bos, cfg.eos)
    run = _describe(cfg, tokenizer, special, inputs)
    out = cfg.output
    if (out / MANIFEST_NAME).exists():
        existing = json.loads((out / MANIFEST_NAME).read_text())
        if existing.get("run_id") != run["run_id"]:
            raise ShardError(
                f"{out / MANIFEST_NAME}: this folder holds another output (run id {existing.get('run_id')}, this "
                f"one's is {run['run_id']}: inputs, tokenizer or settings differ). Use a new --output folder."
            )
        return existing
    out.mkdir(parents=True, exist_ok=True)
    stats = PackStats()
    t0 = last = time.perf_counter()

    def documents() -> Iterator[Document]:
        nonlocal last
        for item in tokenize_records(read_inputs(inputs, fields), tokenizer, special):
            if isinstance(item, Skip):
                if cfg.strict:
                    raise StrictInputError(f"{item.where()}: {item.reason} (--strict; drop it to skip and count)")
                stats.skipped[item.kind] = stats.skipped.get(item.kind, 0) + 1
                if len(stats.skip_examples) < 20:
                    stats.skip_examples.append(f"{item.where()}: {item.reason}")
                continue
            stats.documents += 1
            stats.tokens += len(item.tokens)
            if time.perf_counter() - last > progress_every_s:
                last = time.perf_counter()
                rate = stats.tokens / max(last - t0, 1e-9)
                print(f"pack: {stats.documents:,} documents, {stats.tokens:,} tokens ({rate:,.0f} tok/s)", flush=True)
            yield item

    shards: list[dict[str, Any]] = []
    pending: list[PackedRow] = []

    def flush() -> None:
        rows = _unscored_rows(pending, stats.rows - len(pending))
        info = write_shard(build_table(rows, 0.0), out / shard_name(len(shards)))
        shards.append(info.to_dict())
        pending.clear()

    for row in pack(documents(), cfg.seq_len):
        pending.append(row)
        stats.rows += 1
        stats.last_row_tokens = len(row.tokens)
        if len(pending) == cfg.rows_per_shard:
            flush()
    if pending:
        flush()
    if not shards:
        raise InputError(
            f"no usable documents in the inputs ({sum(stats.skipped.values())} records skipped: {stats.skipped}); "
            "check --text-field / --token-field"
        )
    for stale in sorted(out.glob("shard-*.parquet")):  # from an earlier, longer unfinished run of this folder
        if stale.name not in {s["file"] for s in shards}:
            stale.unlink()
    run["input"].update(
        documents=stats.documents,
        tokens=stats.tokens,
        last_row_tokens=stats.last_row_tokens,
        skipped=dict(sorted(stats.skipped.items())),
        skip_examples=stats.skip_examples,
    )
    manifest = assemble_manifest(run, shards)
    write_json_atomic(out / MANIFEST_NAME, manifest)
    return manifest


# -- the subcommand ---------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tokenizer and data")
    g.add_argument("--tokenizer", required=True, type=Path, help="folder with the tokenizer files (or a model folder)")
    g.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        dest="inputs",
        help="corpus: .jsonl/.jsonl.gz, .parquet, folders of .txt, or `datasets` save_to_disk folders",
    )
    g.add_argument("--output", required=True, type=Path, help="output folder (manifest.json + shard-*.parquet)")
    g.add_argument("--text-field", default="text", help="field/column holding the text (default: text)")
    g.add_argument("--id-field", default="id", help="field holding the document id (default: id)")
    g.add_argument("--token-field", default=None, help="pre-tokenized input: field with token ids (default: off)")
    g.add_argument("--strict", action="store_true", help="fail on the first unusable record instead of skipping it")
    g = p.add_argument_group("packing")
    g.add_argument("--seq-len", type=int, default=4096, help="training sequence length; rows hold seq-len + 1 tokens")
    g.add_argument("--rows-per-shard", type=int, default=2048, help="rows per shard (default 2048)")
    g.add_argument("--bos", choices=BOS_POLICIES, default="auto", help="prepend BOS to each document (default auto)")
    g.add_argument("--eos", choices=EOS_POLICIES, default="always", help="append EOS to each document")
    g.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines (default 10)")


def run(args: argparse.Namespace) -> int:
    cfg = PackConfig(
        tokenizer=args.tokenizer,
        inputs=args.inputs,
        output=args.output,
        seq_len=args.seq_len,
        rows_per_shard=args.rows_per_shard,
        text_field=args.text_field,
        id_field=args.id_field,
        token_field=args.token_field,
        bos=args.bos,
        eos=args.eos,
        strict=args.strict,
    )
    t0 = time.perf_counter()
    manifest = pack_output(cfg, progress_every_s=args.progress_every)
    t = manifest["totals"]
    skipped = sum((manifest["input"].get("skipped") or {}).values())
    print(
        f"{cfg.output}: pack-only output, {manifest['input']['documents']:,} documents, {t['tokens']:,} tokens in "
        f"{t['rows']:,} rows of {cfg.seq_len + 1} and {t['shards']} shards ({skipped} records skipped), "
        f"{time.perf_counter() - t0:.1f} s. Train it with `remit-train --weights none`.",
        flush=True,
    )
    return 0
