"""Is a shard's data the data it was written with? The readers' check against the manifest's checksums.

- Format version 2 records a checksum per column (`remit.shards.checksum.column_checksums`): a reader
  checks every column it reads, and a mismatch names the column. The row is then looked for by the
  shard's own consistency (`first_inconsistent_row`): the summary columns are recomputed from the
  token lists and the weights from the log-probs, so a changed weight, log-prob or segment start shows
  in its row. A change that keeps the shard consistent (a token id, a document id, or every column
  of a row rewritten together) is named by column only.
- Format version 1 recorded the file's sha256 and the token checksum: a reader of such an output
  hashes the whole file (every column, named by file only) besides the token checksum.
- `verify_file` streams a shard one row group at a time, so checking a whole output needs the memory
  of one row group, as the DuckDB views do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.shards.checksum import ColumnHasher, file_sha256, token_checksum
from remit.shards.manifest import MANIFEST_NAME, ShardError, redo_shard
from remit.shards.schema import SCHEMA, list_length_mismatches, schema_mismatch
from remit.shards.weights import Center, remit_weights
from remit.shards.writer import Rows, build_table

#: Stored float32 weights vs the rule recomputed in float64: rounding is ~6e-8.
WEIGHT_TOLERANCE = 1e-5
#: Derived columns recomputed from the token lists (by the writer's own code) to find a changed row.
DERIVED_COLUMNS = (
    "segment_n_scored",
    "segment_sum_weight",
    "segment_sum_discrepancy",
    "n_scored",
    "mean_weight",
    "frac_at_low",
    "frac_at_high",
    "mean_discrepancy",
)


def recorded_checksums(entry: dict[str, Any]) -> dict[str, str] | None:
    """The per-column checksums of a manifest shard entry; None for an entry of format version 1."""
    sums = entry.get("column_checksums")
    return dict(sums) if isinstance(sums, dict) else None


def check_table(
    table: pa.Table, entry: dict[str, Any], path: Path, *, eps: float, center: Center, manifest: Path | None = None
) -> None:
    """Raise ShardError unless every column of `table` (read from `path`) matches `entry`'s checksums.

    For an entry of format version 1 the token checksum is checked (when token_ids was read) and the
    file's sha256, which covers every column.
    """
    where = manifest or path.parent / MANIFEST_NAME
    sums = recorded_checksums(entry)
    if sums is None:
        _check_v1(table, entry, path, where)
        return
    bad = []
    for name in table.column_names:
        if name not in sums:
            raise ShardError(
                f"{where}: the entry of {path.name} has no checksum of column {name!r}; {redo_shard(Path(path).parent)}"
            )
        h = ColumnHasher(table.column(name).type)
        h.update(table.column(name))
        if h.hexdigest() != sums[name]:
            bad.append(name)
    if bad:
        raise mismatch_error(path, bad, where, eps=eps, center=center)


def verify_file(path: Path, entry: dict[str, Any], *, eps: float, center: Center, manifest: Path | None = None) -> None:
    """Check every column of the shard at `path` against `entry`, one row group at a time."""
    where = manifest or path.parent / MANIFEST_NAME
    sums = recorded_checksums(entry)
    pf = _open(path)
    if sums is None:
        _check_file_hash(path, entry, where)
        token = token_checksum(*_token_arrays(pf))
        if token != entry.get("token_checksum"):
            raise _token_error(path, token, entry, where)
        return
    hashers = {f.name: ColumnHasher(f.type) for f in pf.schema_arrow}
    rows = 0
    try:
        for i in range(pf.num_row_groups):
            group = pf.read_row_group(i)
            rows += group.num_rows
            for name, h in hashers.items():
                h.update(group.column(name))
    except Exception as e:  # a corrupt page or compressed block: pyarrow raises several types
        raise ShardError(
            f"{path}: cannot be read as Parquet ({type(e).__name__}: {' '.join(str(e).split())}); the file is "
            f"corrupt. {redo_shard(Path(path).parent)}"
        ) from e
    if rows != int(entry["rows"]):
        raise ShardError(f"{path}: {rows} rows, {where} says {entry['rows']}; {redo_shard(Path(path).parent)}")
    missing = sorted(set(hashers) - set(sums))
    if missing:
        raise ShardError(
            f"{where}: the entry of {path.name} has no checksum of column {missing[0]!r}; {redo_shard(Path(path).parent)}"
        )
    bad = [name for name, h in hashers.items() if h.hexdigest() != sums[name]]
    if bad:
        raise mismatch_error(path, bad, where, eps=eps, center=center)


def mismatch_error(path: Path, columns: list[str], manifest: Path, *, eps: float, center: Center) -> ShardError:
    """The one-line refusal of a shard whose `columns` do not match their checksums, with the first row
    that disagrees with the rest of the shard where one does."""
    named = ", ".join(repr(c) for c in columns)
    what = f"column {named} does" if len(columns) == 1 else f"columns {named} do"
    try:
        found = locate(path, eps=eps, center=center, prefer=columns)
    except Exception:  # the search is a courtesy: a shard too damaged to search is still refused
        found = None
    if found is None:
        row = "; no row disagrees with the shard's other columns, so the change cannot be placed in a row"
    else:
        row = f"; first row that disagrees with the rest of the shard: row {found[0]} (sample {found[1]}), {found[2]}"
    return ShardError(
        f"{path}: {what} not match the checksum recorded in {manifest}{row}. The shard was changed after it "
        f"was written. {redo_shard(Path(path).parent)}"
    )


def locate(
    path: Path, *, eps: float, center: Center, prefer: tuple[str, ...] | list[str] = ()
) -> tuple[int, int, str] | None:
    """(row in the file, sample id, what is wrong) of the first row of the shard at `path` that is not
    consistent with itself; None when every row is. Of several findings in that row, one that names a
    column of `prefer` is given."""
    pf = pq.ParquetFile(path)
    first = 0
    for i in range(pf.num_row_groups):
        group = pf.read_row_group(i)
        found = first_inconsistent_row(group, eps=eps, center=center, prefer=prefer)
        if found is not None:
            r, why = found
            return first + r, int(group.column("sample_id")[r].as_py()), why
        first += group.num_rows
    return None


def first_inconsistent_row(
    table: pa.Table, *, eps: float, center: Center, prefer: tuple[str, ...] | list[str] = ()
) -> tuple[int, str] | None:
    """(row, what is wrong) of the first row of `table` (all columns) whose lists disagree in length,
    whose segment layout is invalid, whose NaN log-probs are not exactly at its segment starts, whose
    summary columns differ from those recomputed from its lists, or whose weights do not follow from
    its log-probs; None when every row is consistent."""

    found: list[tuple[int, str]] = []

    def first(findings: list[tuple[int, str]]) -> tuple[int, str] | None:
        if not findings:
            return None
        return min(findings, key=lambda f: (f[0], not any(c in f[1] for c in prefer), f[1]))

    for name, against, bad in list_length_mismatches(table):
        found.append((int(np.flatnonzero(bad)[0]), f"its {name} list does not have the length {against} gives"))
    if found:
        return first(found)
    n_tok = pc.list_value_length(table.column("token_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = [np.asarray(s, np.int64) for s in table.column("segment_starts").to_pylist()]
    layout = [len(s) == 0 or s[0] != 0 or bool(np.any(np.diff(s) <= 0)) or s[-1] >= n for s, n in zip(starts, n_tok)]
    if any(layout):
        return layout.index(True), "its segment_starts do not begin at 0 and increase inside the row"
    offsets = np.concatenate([[0], np.cumsum(n_tok)])
    row_of = np.repeat(np.arange(len(n_tok)), n_tok)

    def first_row(mask: np.ndarray) -> int | None:
        return int(row_of[np.flatnonzero(mask)[0]]) if mask.any() else None

    flat = {c: pc.list_flatten(table.column(c)).to_numpy(zero_copy_only=False) for c in ("logp_base", "logp_rl")}
    is_start = np.zeros(len(row_of), bool)
    if len(row_of):
        is_start[np.concatenate([s + o for s, o in zip(starts, offsets[:-1])])] = True
    for c, values in flat.items():
        r = first_row(np.isnan(values) != is_start)
        if r is not None:
            found.append((r, f"its {c} is NaN away from its segment_starts, or not NaN at one"))
    if found:
        return first(found)
    weight = pc.list_flatten(table.column("weight")).to_numpy(zero_copy_only=False)
    rows = Rows(
        sample_ids=table.column("sample_id").to_numpy(),
        row_lengths=n_tok,
        token_ids=pc.list_flatten(table.column("token_ids")).to_numpy(zero_copy_only=False),
        logp_base=flat["logp_base"],
        logp_rl=flat["logp_rl"],
        weight=weight,
        segment_starts=[s.astype(np.int32) for s in starts],
        segment_doc_ids=table.column("segment_doc_ids").to_pylist(),
        segment_doc_offsets=[np.asarray(s, np.int64) for s in table.column("segment_doc_offsets").to_pylist()],
        sources=table.column("source").to_pylist(),
    )
    again = build_table(rows, eps)
    for name in DERIVED_COLUMNS:
        differs = _rows_differing(table.column(name), again.column(name))
        if differs.any():
            found.append((int(np.flatnonzero(differs)[0]), f"its {name} differs from its lists"))
    expected = remit_weights(flat["logp_rl"], flat["logp_base"], n_tok, starts, eps=eps, center=center)
    r = first_row(np.abs(expected.astype(np.float64) - weight) > WEIGHT_TOLERANCE)
    if r is not None:
        found.append(
            (r, f"its weight values do not follow from its logp_rl and logp_base (eps {eps}, centring {center})")
        )
    return first(found)


def _rows_differing(stored: pa.ChunkedArray, recomputed: pa.ChunkedArray) -> np.ndarray:
    """Per row: do the two columns differ (bit for bit, NaN equal to NaN)?"""
    a, b = stored.combine_chunks(), recomputed.combine_chunks()
    if pa.types.is_list(a.type):
        values_a = a.flatten().to_numpy(zero_copy_only=False)
        values_b = b.flatten().to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(a).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(values_a) != len(values_b):
            return np.ones(len(a), bool)
        diff = ~_same(values_a, values_b)
        owner = np.repeat(np.arange(len(a)), lengths)
        return np.bincount(owner[diff], minlength=len(a)) > 0
    return ~_same(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False))


def _same(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    same = x == y
    if x.dtype.kind == "f":
        same |= np.isnan(x) & np.isnan(y)
    return same


def _open(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise ShardError(f"{path}: missing. {redo_shard(Path(path).parent)}") from None
    except Exception as e:  # pyarrow raises several types for a truncated or corrupt footer
        raise ShardError(
            f"{path}: cannot be read as Parquet ({type(e).__name__}: {' '.join(str(e).split())}); the file is "
            f"truncated or corrupt. {redo_shard(Path(path).parent)}"
        ) from e
    mismatch = schema_mismatch(pf.schema_arrow)
    if mismatch:
        raise ShardError(
            f"{path}: wrong schema ({mismatch}); not written by this remit version, or altered. {redo_shard(Path(path).parent)}"
        )
    return pf


def _token_arrays(pf: pq.ParquetFile) -> tuple[np.ndarray, np.ndarray]:
    column = pf.read(columns=["token_ids"]).column("token_ids")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, pc.list_flatten(column).to_numpy(zero_copy_only=False)


def _check_v1(table: pa.Table, entry: dict[str, Any], path: Path, where: Path) -> None:
    if "token_ids" in table.column_names:
        column = table.column("token_ids")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        got = token_checksum(lengths, pc.list_flatten(column).to_numpy(zero_copy_only=False))
        if got != entry.get("token_checksum"):
            raise _token_error(path, got, entry, where)
    _check_file_hash(path, entry, where)


def _check_file_hash(path: Path, entry: dict[str, Any], where: Path) -> None:
    recorded = entry.get("file_sha256")
    if not recorded:
        raise ShardError(
            f"{where}: the entry of {path.name} records neither column checksums nor a file hash, so its data "
            "cannot be checked; re-create the output with this remit (delete it and run the annotation again)."
        )
    if file_sha256(path) != recorded:
        raise ShardError(
            f"{path}: its content differs from the sha256 recorded in {where} (an output of format version 1, "
            f"whose checksums name the file, not the column). The shard was changed after it was written. "
            f"{redo_shard(Path(path).parent)}"
        )


def _token_error(path: Path, got: str, entry: dict[str, Any], where: Path) -> ShardError:
    return ShardError(
        f"{path}: token checksum {got} does not match {entry.get('token_checksum')} in {where}; the shard does "
        f"not hold the tokens it was written with. {redo_shard(Path(path).parent)}"
    )


__all__ = [
    "DERIVED_COLUMNS",
    "SCHEMA",
    "check_table",
    "first_inconsistent_row",
    "locate",
    "mismatch_error",
    "recorded_checksums",
    "verify_file",
]
