"""Build shard tables from flat arrays and write them atomically.

- `build_table`: flat arrays (`Rows`) -> one Arrow table in SCHEMA, with the per-row and
  per-segment summary columns filled in.
- `write_shard`: the checksum of every column is computed from the table in memory; the table goes to
  a temporary name (`remit.common.atomic`), is read back and checked (schema, row count, list
  lengths, every column's checksum), and only then renamed into place. A crash leaves either no
  shard or a complete one; a stray temporary file is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remit.common.atomic import atomic_path
from remit.common.faults import failpoint
from remit.shards.checksum import column_checksums, file_sha256, token_checksum
from remit.shards.manifest import ShardError
from remit.shards.schema import FLOAT_LIST_COLUMNS, SCHEMA, list_length_mismatches, schema_mismatch
from remit.shards.weights import group_ids

#: Target uncompressed size of a row group. Big enough for efficient remote reads, small enough to stream.
DEFAULT_ROW_GROUP_BYTES = 64 << 20
#: Uncompressed bytes per token of the four token-level lists.
_BYTES_PER_TOKEN = 16


@dataclass
class Rows:
    """Many rows in flat form: row r's tokens are ``token_ids[offsets[r]:offsets[r+1]]``."""

    sample_ids: np.ndarray  # int64 [R]
    row_lengths: np.ndarray  # int64 [R]
    token_ids: np.ndarray  # int32 [T]
    logp_base: np.ndarray  # float32 [T], NaN at segment starts
    logp_rl: np.ndarray  # float32 [T]
    weight: np.ndarray  # float32 [T]
    segment_starts: list[np.ndarray]  # per row, int32 in-row offsets, first is 0
    segment_doc_ids: list[list[str]]
    segment_doc_offsets: list[np.ndarray]  # per row, int64
    sources: list[str]  # per row: the input file of the row's first segment

    def __post_init__(self) -> None:
        n_rows, n_tok = len(self.sample_ids), int(np.sum(self.row_lengths))
        for name in ("token_ids", "logp_base", "logp_rl", "weight"):
            if len(getattr(self, name)) != n_tok:
                raise ValueError(f"{name} has {len(getattr(self, name))} values, the rows hold {n_tok} tokens")
        for name in ("row_lengths", "segment_starts", "segment_doc_ids", "segment_doc_offsets", "sources"):
            if len(getattr(self, name)) != n_rows:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n_rows} rows")

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.row_lengths, dtype=np.int64)])


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about one shard."""

    file: str
    rows: int
    tokens: int
    first_sample_id: int
    token_checksum: str
    column_checksums: dict[str, str]
    """Column name -> checksum of its values (`remit.shards.checksum.column_checksums`), every column."""
    file_sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _list_array(offsets: np.ndarray, values: pa.Array | np.ndarray, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=type_.value_type))


def _nested(rows: list, type_: pa.DataType) -> pa.ListArray:
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = (
        [v for r in rows for v in r]
        if type_.value_type == pa.string()
        else (np.concatenate(rows) if rows else np.zeros(0))
    )
    return _list_array(offsets, flat, type_)


def build_table(rows: Rows, eps: float) -> pa.Table:
    """The shard table for `rows`, with the per-row and per-segment summary columns filled in."""
    n_rows = len(rows.sample_ids)
    offsets = rows.offsets
    row_of_tok = np.repeat(np.arange(n_rows), rows.row_lengths)
    d = rows.logp_rl.astype(np.float64) - rows.logp_base.astype(np.float64)
    scored = ~np.isnan(d)
    w64 = rows.weight.astype(np.float64)

    def per_row(values: np.ndarray) -> np.ndarray:
        return np.bincount(row_of_tok[scored], weights=values[scored], minlength=n_rows)

    n_scored = np.bincount(row_of_tok[scored], minlength=n_rows)
    denom = np.maximum(n_scored, 1)
    low, high = np.float32(1.0 - eps), np.float32(1.0 + eps)
    mean_weight = np.where(n_scored > 0, per_row(w64) / denom, 1.0)
    frac_low = per_row((rows.weight <= low).astype(np.float64)) / denom
    frac_high = per_row((rows.weight >= high).astype(np.float64)) / denom
    mean_d = np.where(n_scored > 0, per_row(np.nan_to_num(d)) / denom, 0.0)

    seg = group_ids(rows.row_lengths, rows.segment_starts)
    n_seg = np.array([len(s) for s in rows.segment_starts], dtype=np.int64)
    seg_offsets = np.concatenate([[0], np.cumsum(n_seg)])
    total_seg = int(seg_offsets[-1])
    seg_scored = np.bincount(seg[scored], minlength=total_seg).astype(np.int32)
    seg_sum_w = np.bincount(seg[scored], weights=w64[scored], minlength=total_seg)
    seg_sum_d = np.bincount(seg[scored], weights=d[scored], minlength=total_seg)

    arrays = {
        "sample_id": pa.array(rows.sample_ids, pa.int64()),
        "token_ids": _list_array(offsets, rows.token_ids.astype(np.int32), SCHEMA.field("token_ids").type),
        "logp_base": _list_array(offsets, rows.logp_base.astype(np.float32), SCHEMA.field("logp_base").type),
        "logp_rl": _list_array(offsets, rows.logp_rl.astype(np.float32), SCHEMA.field("logp_rl").type),
        "weight": _list_array(offsets, rows.weight.astype(np.float32), SCHEMA.field("weight").type),
        "segment_starts": _nested([np.asarray(s, np.int32) for s in rows.segment_starts], pa.list_(pa.int32())),
        "segment_doc_ids": _nested(rows.segment_doc_ids, pa.list_(pa.string())),
        "segment_doc_offsets": _nested(
            [np.asarray(s, np.int64) for s in rows.segment_doc_offsets], pa.list_(pa.int64())
        ),
        "segment_n_scored": _list_array(seg_offsets, seg_scored, pa.list_(pa.int32())),
        "segment_sum_weight": _list_array(seg_offsets, seg_sum_w, pa.list_(pa.float64())),
        "segment_sum_discrepancy": _list_array(seg_offsets, seg_sum_d, pa.list_(pa.float64())),
        "source": pa.array(rows.sources, pa.string()),
        "n_tokens": pa.array(rows.row_lengths.astype(np.int32)),
        "n_scored": pa.array(n_scored.astype(np.int32)),
        "mean_weight": pa.array(mean_weight.astype(np.float32)),
        "frac_at_low": pa.array(frac_low.astype(np.float32)),
        "frac_at_high": pa.array(frac_high.astype(np.float32)),
        "mean_discrepancy": pa.array(mean_d.astype(np.float32)),
    }
    return pa.Table.from_arrays([arrays[n] for n in SCHEMA.names], schema=SCHEMA)


def rows_per_group(table: pa.Table, row_group_bytes: int) -> int:
    tokens = int(pa.compute.sum(table.column("n_tokens")).as_py() or 0)
    per_row = max(1, tokens * _BYTES_PER_TOKEN // max(1, table.num_rows))
    return max(1, row_group_bytes // per_row)


def write_table(table: pa.Table, path: str | Path, row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES) -> None:
    """Write `table` (already in SCHEMA) to `path` with the project's Parquet settings; not atomic."""
    pq.write_table(
        table,
        path,
        row_group_size=rows_per_group(table, row_group_bytes),
        compression="zstd",
        compression_level=3,
        # Dictionary encoding only where it pays (repeated strings); floats use BYTE_STREAM_SPLIT.
        use_dictionary=["source", "segment_doc_ids.list.element"],
        column_encoding={f"{c}.list.element": "BYTE_STREAM_SPLIT" for c in FLOAT_LIST_COLUMNS},
        write_statistics=["sample_id", "n_tokens", "n_scored", "mean_weight", "source"],
        store_schema=True,
    )


def write_shard(table: pa.Table, path: str | Path, row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES) -> ShardInfo:
    """Write `table` atomically to `path`, verified by a read-back before the rename."""
    path = Path(path)
    lengths = table.column("n_tokens").to_numpy().astype(np.int64)
    tokens = pa.compute.list_flatten(table.column("token_ids")).to_numpy()
    expected = token_checksum(lengths, tokens)
    sums = column_checksums(table)
    with atomic_path(path) as tmp:
        write_table(table, tmp, row_group_bytes)
        failpoint("shard-tmp-written")
        _check_read_back(tmp, table.num_rows, sums)
        info = ShardInfo(
            file=path.name,
            rows=table.num_rows,
            tokens=int(lengths.sum()),
            first_sample_id=int(table.column("sample_id")[0].as_py()) if table.num_rows else -1,
            token_checksum=expected,
            column_checksums=sums,
            file_sha256=file_sha256(tmp),
            bytes=tmp.stat().st_size,
        )
    return info


def _check_read_back(path: Path, rows: int, sums: dict[str, str]) -> None:
    """The file just written, read back: the schema, the row count, every list's length and every
    column's checksum must be those of the table in memory (a failing disk or library is caught here,
    before the rename)."""
    back = pq.read_table(path)
    problem = schema_mismatch(back.schema)
    if problem is None and back.num_rows != rows:
        problem = f"{back.num_rows} rows read back, {rows} written"
    if problem is None and (mismatches := list_length_mismatches(back)):
        problem = f"list lengths of column {mismatches[0][0]!r} differ from {mismatches[0][1]}"
    if problem is None and (bad := [n for n, c in column_checksums(back).items() if c != sums.get(n)]):
        problem = f"column(s) {', '.join(bad)} differ from the table written"
    if problem is not None:
        raise ShardError(
            f"{path}: the file just written does not read back as written ({problem}); nothing was renamed into "
            "place. Check the disk and the pyarrow installation, then run the same command again."
        )
