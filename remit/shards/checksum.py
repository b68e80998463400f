"""Checksums recorded in the manifest and checked at write time, at load time and by `validate`.

- `token_checksum`: the row lengths and token ids (the plan of an annotation run carries it too).
- `column_checksums`: one checksum per column of a shard, over its decoded values, so that every
  column a reader uses is covered and a mismatch names the column. It depends only on the values,
  not on how Parquet encoded them (compression, row groups, page sizes), and it can be computed a
  row group at a time (`ColumnHasher`).
- `file_sha256`: the file's bytes (manifests of format version 1 have only this and the token
  checksum).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHECKSUM_PREFIX = "blake2b128:"


def _blake() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def token_checksum(row_lengths: np.ndarray, token_ids: np.ndarray) -> str:
    """BLAKE2b-128 of the row lengths and the flat token ids (int32, little endian).

    Hashing the lengths too means the same tokens cut into different rows give a different checksum.
    """
    h = _blake()
    h.update(np.ascontiguousarray(row_lengths, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(token_ids, dtype="<i4").tobytes())
    return CHECKSUM_PREFIX + h.hexdigest()


class ColumnHasher:
    """The checksum of one column, fed chunk by chunk (any split of the rows gives the same result).

    Each level of the type keeps its own running hashes: for a list, the list lengths and the flat
    values below; for a string, the string lengths and the UTF-8 bytes; for a number, its little-endian
    bytes, with every NaN written as the one canonical NaN. Null positions (the format has none) are
    hashed by their global index, so a null never goes unnoticed.
    """

    def __init__(self, type_: pa.DataType) -> None:
        self.type = type_
        self.count = 0
        self.nulls = _blake()
        self.had_nulls = False
        self.lengths = _blake()
        self.values = _blake()
        self.child = ColumnHasher(type_.value_type) if pa.types.is_list(type_) else None
        if not (self.child or pa.types.is_string(type_) or _is_number(type_)):
            raise ValueError(f"no column checksum is defined for type {type_}")

    def update(self, chunk: pa.Array | pa.ChunkedArray) -> None:
        chunks = chunk.chunks if isinstance(chunk, pa.ChunkedArray) else [chunk]
        for arr in chunks:
            self._update(arr)

    def _update(self, arr: pa.Array) -> None:
        if not arr.type.equals(self.type):
            raise ValueError(f"column of type {arr.type} fed to a checksum of type {self.type}")
        if arr.null_count:
            self.had_nulls = True
            where = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)) + self.count
            self.nulls.update(where.astype("<i8").tobytes())
        self.count += len(arr)
        if self.child is not None:
            lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
            self.lengths.update(lengths.astype("<i8").tobytes())
            self.child.update(arr.flatten())  # flatten() honours the slice offset; .values does not
        elif pa.types.is_string(self.type):
            offsets = np.frombuffer(arr.buffers()[1], dtype="<i4")[arr.offset : arr.offset + len(arr) + 1]
            self.lengths.update(np.diff(offsets).astype("<i8").tobytes())
            data = arr.buffers()[2]
            if data is not None and len(arr):
                self.values.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        else:
            values = arr.fill_null(0).to_numpy(zero_copy_only=False)
            if values.dtype.kind == "f":
                values = np.where(np.isnan(values), values.dtype.type(np.nan), values)
            self.values.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())

    def digest(self) -> bytes:
        h = _blake()
        h.update(f"{_type_name(self.type)}:{self.count}".encode())
        if self.had_nulls:
            h.update(b"nulls" + self.nulls.digest())
        h.update(self.lengths.digest() + self.values.digest())
        if self.child is not None:
            h.update(self.child.digest())
        return h.digest()

    def hexdigest(self) -> str:
        return CHECKSUM_PREFIX + self.digest().hex()


def _type_name(type_: pa.DataType) -> str:
    """The type without field names (a list's item is called "item" in memory and "element" in Parquet)."""
    if pa.types.is_list(type_):
        return f"list<{_type_name(type_.value_type)}>"
    return str(type_)


def _is_number(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def column_checksum(column: pa.Array | pa.ChunkedArray) -> str:
    h = ColumnHasher(column.type)
    h.update(column)
    return h.hexdigest()


def column_checksums(table: pa.Table) -> dict[str, str]:
    """Column name -> checksum of its values, for every column of `table`."""
    return {name: column_checksum(table.column(name)) for name in table.column_names}


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
