"""Open an annotation output and read its shards, checking what the manifest promises."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.shards.checksum import column_checksum, token_checksum
from remit.shards.integrity import check_table, verify_file
from remit.shards.manifest import Manifest, ShardError, confined, read_manifest, redo_shard
from remit.shards.schema import (
    SCHEMA,
    list_length_mismatches,
    list_lengths,
    schema_mismatch,
)


def read_shard(
    path: str | Path, *, expected: dict[str, str] | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Read one shard, checking its schema, its list lengths and (if given) the checksums of the columns
    read against `expected` (column name -> checksum, as the manifest records them)."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
        mismatch = schema_mismatch(pf.schema_arrow)
        if mismatch:
            raise ShardError(
                f"{path}: wrong schema ({mismatch}). It was not written by this remit version or was altered. "
                f"{redo_shard(Path(path).parent)}"
            )
        table = pf.read(columns=columns)
    except ShardError:
        raise
    except FileNotFoundError:
        raise ShardError(f"{path}: missing. {redo_shard(Path(path).parent)}") from None
    except Exception as e:  # pyarrow raises several types for truncated or corrupt files
        raise ShardError(
            f"{path}: cannot be read as Parquet ({type(e).__name__}: {' '.join(str(e).split())}). The file is "
            f"truncated or corrupt. {redo_shard(Path(path).parent)}"
        ) from e
    check_list_lengths(table, path)
    if expected is not None:
        bad = [name for name in table.column_names if column_checksum(table.column(name)) != expected.get(name)]
        if bad:
            raise ShardError(
                f"{path}: column(s) {', '.join(bad)} do not match their expected checksums; the file does not hold "
                f"the data it was written with. {redo_shard(Path(path).parent)}"
            )
    return table


def check_list_lengths(table: pa.Table, path: str | Path) -> None:
    """Raise on the first list column whose length does not match its row (see list_length_mismatches)."""
    for name, against, bad in list_length_mismatches(table):
        rows = np.flatnonzero(bad)
        raise ShardError(
            f"{path}: row {int(rows[0])} has a different number of values in {name!r} than {against} says "
            f"({len(rows)} rows affected). The shard is inconsistent. {redo_shard(Path(path).parent)}"
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

    def path(self, index: int) -> Path:
        """Shard `index`'s file, checked to lie inside the output folder (`confined`)."""
        return confined(self.root, self.manifest.shards[index].get("file"), index=index)

    def read(self, index: int, columns: list[str] | None = None, verify: bool = True) -> pa.Table:
        """Shard `index` (all columns, or `columns`), with every column read checked against the
        manifest's checksums when `verify` (see `remit.shards.integrity`)."""
        entry = self.manifest.shards[index]
        path = self.path(index)
        table = read_shard(path, columns=columns)
        if table.num_rows != entry["rows"]:
            raise ShardError(
                f"{path}: {table.num_rows} rows, the manifest says {entry['rows']}. {redo_shard(Path(path).parent)}"
            )
        if verify:
            check_table(table, entry, path, eps=self.manifest.eps, center=self.manifest.center)
        return table

    def iter_tables(self, columns: list[str] | None = None, verify: bool = True) -> Iterator[pa.Table]:
        for i in range(len(self.manifest.shards)):
            yield self.read(i, columns=columns, verify=verify)

    def verify(self, shards: Iterable[int] | None = None) -> None:
        """Check every column of the given shards (default: all) against the manifest, one row group at a
        time; raise ShardError naming the first shard (and column, and row where it can be found) that
        does not match."""
        for i in range(len(self.manifest.shards)) if shards is None else shards:
            verify_file(self.path(i), self.manifest.shards[i], eps=self.manifest.eps, center=self.manifest.center)


def open_output(root: str | Path) -> Output:
    """Open a finished output folder (one with a final manifest.json)."""
    root = Path(root)
    if not root.is_dir():
        raise ShardError(f"{root}: no such output folder")
    return Output(root=root, manifest=read_manifest(root))


__all__ = [
    "SCHEMA",
    "Output",
    "ShardError",
    "check_list_lengths",
    "list_length_mismatches",
    "list_lengths",
    "open_output",
    "read_shard",
]
