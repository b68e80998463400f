"""Altered copies of annotation outputs, for the tests of what the checks and the trainer do with them.

- `alter_shard`: one value of one row rewritten, the file still valid Parquet, the manifest unchanged
  (the checksums no longer match).
- `rerecord_shard`: the manifest made to record a shard's current content (the checksums match again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from remit.shards.checksum import column_checksums, file_sha256
from remit.shards.manifest import MANIFEST_NAME
from remit.shards.reader import table_token_checksum
from remit.shards.writer import write_table


def alter_shard(root: str | Path, file: str, column: str, row: int, edit: Callable[[list], None]) -> Path:
    """Rewrite shard `file` of the output `root` as a valid Parquet file (the project's writer settings)
    with `edit` applied to the Python list of `column`'s value in `row`; the manifest is left as it was."""
    path = Path(root) / file
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    edit(values[row])
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    write_table(table, path)
    return path


def rerecord_shard(root: str | Path, file: str) -> None:
    """Record shard `file`'s current content in the manifest of `root` (checksums, hash, size), as if the
    writer had produced it: for tests of what the trainer does with values that pass the checksums."""
    path = Path(root) / file
    manifest = Path(root) / MANIFEST_NAME
    data = json.loads(manifest.read_text())
    entry = next(e for e in data["shards"] if e["file"] == file)
    table = pq.read_table(path)
    entry.update(
        column_checksums=column_checksums(table),
        token_checksum=table_token_checksum(table),
        file_sha256=file_sha256(path),
        bytes=path.stat().st_size,
    )
    manifest.write_text(json.dumps(data, indent=1))
