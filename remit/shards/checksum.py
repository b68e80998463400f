"""Checksums recorded in the manifest and checked at write time, at load time and by `validate`."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def token_checksum(row_lengths: np.ndarray, token_ids: np.ndarray) -> str:
    """BLAKE2b-128 of the row lengths and the flat token ids (int32, little endian).

    Hashing the lengths too means the same tokens cut into different rows give a different checksum.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(row_lengths, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(token_ids, dtype="<i4").tobytes())
    return "blake2b128:" + h.hexdigest()


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
