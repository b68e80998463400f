"""`remit-annotate pack`: a pack-only output, token ids in sequence-aligned shards and no scoring.

    remit-annotate pack --tokenizer DIR --input PATH [PATH ...] --output DIR [--seq-len N ...]

- Tokenizes the corpus once with a tokenizer folder (no model is loaded) and packs it into rows of
  exactly ``seq_len + 1`` tokens as the scored path does: the same packer, BOS/EOS policy and shard
  schema, so the output reads like any other.
- Every log-prob is NaN and every weight 1.0; the manifest says ``"passes": "none"``. `remit-train
  --weights none` trains on it (a vanilla baseline, or pre-training from scratch with
  `--init-config`) at no scoring cost; the weighted modes refuse it, and validate, stats and show
  say that it holds no weights.
- Deterministic: a rerun writes the same bytes. Packing is cheap, so there is no unit-level resume:
  a rerun over an unfinished folder writes every shard again; a finished folder of the same run is
  left as it is, and another run's folder is refused.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from remit import __version__
from remit.annotate.claim import finished_output
from remit.annotate.config import AnnotateConfig
from remit.annotate.inputs import Fields, InputScan
from remit.annotate.packing import PackedRow
from remit.annotate.progress import Progress
from remit.annotate.tokenize import BosPolicy, EosPolicy, SpecialTokens, load_tokenizer
from remit.annotate.units import CorpusStats, corpus_units, input_description, open_corpus, packing_description
from remit.annotate.workdir import WorkDir
from remit.common.flags import add_arguments as add_config_arguments
from remit.common.flags import check_choices, config_from_args, option, option_of, run_local_fields
from remit.shards.checksum import bytes_sha256
from remit.shards.manifest import assemble_manifest
from remit.shards.writer import Rows, build_table, write_shard

#: The manifest's weight rule for a pack-only output.
PACK_RULE = "none: pack-only output, not scored; every log-prob is NaN and every weight 1.0"


@dataclass
class PackConfig:
    # --- tokenizer and data ---
    tokenizer: Path = option(
        help="folder with the tokenizer files (a model folder works: only its tokenizer is loaded)",
        group="tokenizer and data",
    )
    """Folder holding the tokenizer files; the manifest records it and its hash."""
    inputs: list[Path] = option_of(AnnotateConfig, "inputs", group="tokenizer and data")
    """Corpus: JSONL (plain/gzip), Parquet, folders of .txt, or `datasets` save_to_disk folders."""
    output: Path = option_of(AnnotateConfig, "output", group="tokenizer and data")
    """Output folder: manifest.json + shard-NNNNN.parquet."""
    text_field: str = option_of(AnnotateConfig, "text_field", group="tokenizer and data")
    """Field (JSONL) or column (Parquet, `datasets`) holding a document's text."""
    id_field: str = option_of(AnnotateConfig, "id_field", group="tokenizer and data")
    """Field holding the document id; a record without it gets '<file>:<record number>'."""
    token_field: str | None = option_of(AnnotateConfig, "token_field", group="tokenizer and data")
    """Set for pre-tokenized input: the field with token ids (used as they are)."""
    split: list[str] = option_of(AnnotateConfig, "split", group="tokenizer and data")
    """The splits of a `datasets` DatasetDict to read (needed when it has several)."""
    strict: bool = option_of(AnnotateConfig, "strict", group="tokenizer and data")
    """Fail on the first unusable record instead of skipping and counting it."""
    # --- packing ---
    seq_len: int = option_of(AnnotateConfig, "seq_len", group="packing")
    """Training sequence length; rows hold seq_len + 1 tokens."""
    bos: BosPolicy = option_of(AnnotateConfig, "bos", group="packing")
    """Prepend BOS to each document: always, never, or auto (when the tokenizer's template does)."""
    eos: EosPolicy = option_of(AnnotateConfig, "eos", group="packing")
    """Append EOS to each document."""
    rows_per_shard: int = option_of(
        AnnotateConfig, "rows_per_shard", group="packing", help="rows per shard (default 2048)"
    )
    """Rows per shard."""
    progress_every_s: float = option_of(AnnotateConfig, "progress_every_s", group="packing")
    """Seconds between progress lines."""

    def __post_init__(self) -> None:
        self.tokenizer, self.output = Path(self.tokenizer), Path(self.output)
        self.inputs = [Path(p) for p in self.inputs]
        check_choices(self)
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {self.seq_len} (--seq-len)")
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1; got {self.rows_per_shard} (--rows-per-shard)")
        if not self.inputs:
            raise ValueError("inputs: give at least one input path (--input)")
        if not self.tokenizer.is_dir():
            raise ValueError(f"--tokenizer {self.tokenizer}: no such folder; pass a folder with the tokenizer files")
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"--output {self.output}: exists and is not a folder")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the output, as recorded in the manifest."""
        d = asdict(self)
        d["tokenizer"] = str(self.tokenizer.resolve())
        d["inputs"] = [str(p.resolve()) for p in self.inputs]
        for k in run_local_fields(PackConfig):
            d.pop(k)
        return d


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


def _describe(
    cfg: PackConfig, tokenizer: Any, special: SpecialTokens, inputs: InputScan, fields: Fields
) -> dict[str, Any]:
    """The manifest's fields known before packing; ``run_id`` hashes them."""
    from remit.shards.tokenizer_hash import tokenizer_hash

    run: dict[str, Any] = {
        "remit_version": __version__,
        "passes": "none",
        "config": cfg.identity(),
        "models": {},
        "engine": None,
        "tokenizer": {"sha256": tokenizer_hash(tokenizer), "path": str(cfg.tokenizer.resolve()), **special.to_dict()},
        "packing": packing_description(cfg.seq_len, cfg.rows_per_shard, scored=False),
        "weights": {"eps": 0.0, "center": "row", "rule": PACK_RULE},
        "input": input_description(inputs, fields),
    }
    run["run_id"] = bytes_sha256(json.dumps(run, sort_keys=True).encode())
    return run


def pack_output(cfg: PackConfig) -> dict[str, Any]:
    """Tokenize, pack and write a pack-only output; return its manifest (written last)."""
    fields = Fields(text=cfg.text_field, id=cfg.id_field, tokens=cfg.token_field)
    scan = open_corpus(cfg.inputs, cfg.output, fields, cfg.split)
    tokenizer = load_tokenizer(cfg.tokenizer)
    special = SpecialTokens.resolve(tokenizer, cfg.bos, cfg.eos)
    run = _describe(cfg, tokenizer, special, scan, fields)
    work = WorkDir(cfg.output)
    finished = finished_output(work, run)
    if finished is not None:
        return finished
    stats = CorpusStats()
    shards: list[dict[str, Any]] = []
    for got in corpus_units(
        scan,
        fields,
        tokenizer,
        special,
        seq_len=cfg.seq_len,
        rows_per_shard=cfg.rows_per_shard,
        strict=cfg.strict,
        stats=stats,
        progress=Progress("pack", unit="tok", every_s=cfg.progress_every_s),
        label="pack",
    ):
        rows = _unscored_rows(got.rows, got.first_sample_id)
        shards.append(write_shard(build_table(rows, 0.0), work.shard_path(got.unit)).to_dict())
    work.remove_other_shards({s["file"] for s in shards})  # from an earlier, longer unfinished run
    run["input"].update(
        documents=stats.documents,
        tokens=stats.tokens,
        last_row_tokens=stats.last_row_tokens,
        skipped=dict(sorted(stats.skipped.items())),
        skip_examples=stats.skip_examples,
        ignored_files=stats.ignored_files,
        ignored_examples=stats.ignored_examples,
    )
    manifest = assemble_manifest(run, shards)
    work.write_manifest(manifest)
    return manifest


# -- the command ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PackConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PackConfig, args)
    t0 = time.perf_counter()
    manifest = pack_output(cfg)
    t = manifest["totals"]
    skipped = sum((manifest["input"].get("skipped") or {}).values())
    print(
        f"{cfg.output}: pack-only output, {manifest['input']['documents']:,} documents, {t['tokens']:,} tokens in "
        f"{t['rows']:,} rows of {cfg.seq_len + 1} and {t['shards']} shards ({skipped} records skipped), "
        f"{time.perf_counter() - t0:.1f} s. Train it with `remit-train --weights none`.",
        flush=True,
    )
    return 0


__all__ = ["PACK_RULE", "PackConfig", "add_arguments", "pack_output", "run"]
