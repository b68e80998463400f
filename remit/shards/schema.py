"""The Parquet schema of an annotation output. `docs/format.md` is the prose version of this file.

- One row is one training sequence of at most ``seq_len + 1`` tokens.
- Value ``i`` of a log-prob list is ``log p(token_i | tokens of its segment before i)``; it is NaN at
  the first token of every segment, where the weight is 1.0.
- Everything the trainer needs is in the list columns; the scalar columns are per-row summaries, so
  that run statistics need no unnest of token lists.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT_NAME = "remit-shards"
#: 2: every shard entry of the manifest records a checksum per column (`column_checksums`); version 1
#: recorded the token checksum and the file's sha256 only, and is still read (see `remit.shards.integrity`).
FORMAT_VERSION = 2

#: Columns whose Parquet encoding is BYTE_STREAM_SPLIT (float32 only; DuckDB reads it, float16 BSS it cannot).
FLOAT_LIST_COLUMNS = ("logp_base", "logp_rl", "weight")

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("logp_base", pa.list_(pa.float32()), nullable=False),
        pa.field("logp_rl", pa.list_(pa.float32()), nullable=False),
        pa.field("weight", pa.list_(pa.float32()), nullable=False),
        pa.field("segment_starts", pa.list_(pa.int32()), nullable=False),
        pa.field("segment_doc_ids", pa.list_(pa.string()), nullable=False),
        pa.field("segment_doc_offsets", pa.list_(pa.int64()), nullable=False),
        # Per-segment summaries (a few values per row), for per-document statistics without a token unnest.
        pa.field("segment_n_scored", pa.list_(pa.int32()), nullable=False),
        pa.field("segment_sum_weight", pa.list_(pa.float64()), nullable=False),
        pa.field("segment_sum_discrepancy", pa.list_(pa.float64()), nullable=False),
        # Per-row summaries over the scored positions (those with a log-prob).
        pa.field("source", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("n_scored", pa.int32(), nullable=False),
        pa.field("mean_weight", pa.float32(), nullable=False),
        pa.field("frac_at_low", pa.float32(), nullable=False),
        pa.field("frac_at_high", pa.float32(), nullable=False),
        pa.field("mean_discrepancy", pa.float32(), nullable=False),
    ],
    metadata={b"remit.format": FORMAT_NAME.encode(), b"remit.format_version": str(FORMAT_VERSION).encode()},
)

TOKEN_LIST_COLUMNS = ("token_ids", "logp_base", "logp_rl", "weight")
SEGMENT_LIST_COLUMNS = (
    "segment_starts",
    "segment_doc_ids",
    "segment_doc_offsets",
    "segment_n_scored",
    "segment_sum_weight",
    "segment_sum_discrepancy",
)


def schema_mismatch(actual: pa.Schema) -> str | None:
    """Describe how `actual` differs from SCHEMA (names, order, types), or None when it matches."""
    if actual.names != SCHEMA.names:
        missing = [n for n in SCHEMA.names if n not in actual.names]
        extra = [n for n in actual.names if n not in SCHEMA.names]
        if missing or extra:
            return f"columns differ: missing {missing}, unexpected {extra}"
        return f"column order differs: {actual.names}"
    for want, got in zip(SCHEMA, actual):
        if not got.type.equals(want.type):
            return f"column {want.name!r} has type {got.type}, expected {want.type}"
    return None


def list_lengths(table: pa.Table, name: str) -> np.ndarray:
    return pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False).astype(np.int64)


def list_length_mismatches(table: pa.Table) -> list[tuple[str, str, np.ndarray]]:
    """(column, what it should match, bad-row mask) for each list column of `table` whose per-row length
    is wrong: token-level lists must hold n_tokens values, segment-level lists one per segment."""
    names = table.column_names
    out = []
    if "n_tokens" in names:
        n_tokens = table.column("n_tokens").to_numpy().astype(np.int64)
        for name in TOKEN_LIST_COLUMNS:
            if name in names:
                out.append((name, "n_tokens", list_lengths(table, name) != n_tokens))
    if "segment_starts" in names:
        n_seg = list_lengths(table, "segment_starts")
        for name in SEGMENT_LIST_COLUMNS[1:]:
            if name in names:
                out.append((name, "segment_starts", list_lengths(table, name) != n_seg))
    return [m for m in out if m[2].any()]
