"""Open an annotation output and read its shards, checking what the manifest promises."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.shards.checksum import token_checksum
from remit.shards.manifest import Manifest, ShardError, read_manifest
from remit.shards.schema import SCHEMA, SEGMENT_LIST_COLUMNS, TOKEN_LIST_COLUMNS, schema_mismatch


def read_shard(path: str | Path, *, expected_checksum: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read one shard, checking its schema, its list lengths and (if given) its token checksum."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        mismatch = schema_mismatch(pf.schema_arrow)
        if mismatch:
            raise ShardError(
                f"{path}: wrong schema ({mismatch}). It was not written by this remit version or was altered; "
                "re-run the annotation for this shard."
            )
        table = pf.read(columns=columns)
    except ShardError:
        raise
    except Exception as e:  # pyarrow raises several types for truncated or corrupt files
        raise ShardError(
            f"{path}: cannot be read as Parquet ({type(e).__name__}: {e}). The file is truncated or corrupt; "
            "delete it and re-run `remit-annotate run` on the output to re-score its unit."
        ) from e
    check_list_lengths(table, path)
    if expected_checksum is not None:
        got = table_token_checksum(table)
        if got != expected_checksum:
            raise ShardError(
                f"{path}: token checksum {got} does not match the manifest's {expected_checksum}. The shard "
                "does not hold the tokens it was written with; delete it and re-run the annotation."
            )
    return table


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


def check_list_lengths(table: pa.Table, path: str | Path) -> None:
    """Raise on the first list column whose length does not match its row (see list_length_mismatches)."""
    for name, against, bad in list_length_mismatches(table):
        rows = np.flatnonzero(bad)
        raise ShardError(
            f"{path}: row {int(rows[0])} has a different number of values in {name!r} than {against} says "
            f"({len(rows)} rows affected). The shard is inconsistent; re-run the annotation for it."
        )


def table_token_checksum(table: pa.Table) -> str:
    tokens = pc.list_flatten(table.column("token_ids")).to_numpy()
    lengths = pc.list_value_length(table.column("token_ids")).to_numpy(zero_copy_only=False)
    return token_checksum(lengths.astype(np.int64), tokens)


@dataclass
class Output:
    """An annotation output folder: its manifest and its shards in sample order."""

    root: Path
    manifest: Manifest

    def read(self, index: int, columns: list[str] | None = None, verify: bool = True) -> pa.Table:
        entry = self.manifest.shards[index]
        table = read_shard(
            self.root / entry["file"],
            expected_checksum=entry["token_checksum"]
            if verify and (columns is None or "token_ids" in columns)
            else None,
            columns=columns,
        )
        if table.num_rows != entry["rows"]:
            raise ShardError(
                f"{self.root / entry['file']}: {table.num_rows} rows, the manifest says {entry['rows']}; "
                "re-run the annotation for this shard."
            )
        return table

    def iter_tables(self, columns: list[str] | None = None, verify: bool = True) -> Iterator[pa.Table]:
        for i in range(len(self.manifest.shards)):
            yield self.read(i, columns=columns, verify=verify)


def open_output(root: str | Path) -> Output:
    """Open a finished output folder (one with a final manifest.json)."""
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: no such output folder")
    return Output(root=root, manifest=read_manifest(root))


__all__ = ["SCHEMA", "Output", "ShardError", "open_output", "read_shard"]
