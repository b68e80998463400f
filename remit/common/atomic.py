"""Atomic file writes: a file appears under its final name complete, or not at all.

- Every writer goes through `atomic_path`: it yields a temporary path beside the target, then flushes
  the file to disk, renames it over the target and flushes the folder, so that a crash (or a power
  failure) leaves the old file or the new one, never a torn one.
- One temporary-name scheme, unique per process and call (``NAME.<pid>-<8 hex>.tmp``): two processes
  writing the same file at once each rename a complete file, and the last rename wins.
- `leftovers` finds what a killed writer left of a target (a plain ``NAME.tmp`` too), and only that:
  a file of another name that merely starts with NAME is never taken for one.
- `write_text_atomic` and `write_json_atomic` cover the text files; Parquet, npz and safetensors
  writers write to the yielded path themselves.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from remit.common.errors import with_path

TMP_SUFFIX = ".tmp"


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary name beside `path`, unique to this process and call."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def leftovers(path: str | Path) -> list[Path]:
    """Temporary files a killed writer may have left of `path`, in name order."""
    path = Path(path)
    scheme = re.compile(re.escape(path.name) + r"(\.\d+-[0-9a-f]{8})?" + re.escape(TMP_SUFFIX))
    return sorted(p for p in path.parent.glob(glob.escape(path.name) + "*" + TMP_SUFFIX) if scheme.fullmatch(p.name))


def fsync_file(path: str | Path) -> None:
    """Flush a written file to disk (before it is renamed into place)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make a rename in the folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to; on success it replaces `path`.

    The temporary file is flushed to disk before the rename and the folder after it. When the body
    raises, the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        named = with_path(e, path)  # a writer's "No space left on device" names no file: name the target
        if named is not e:
            raise named from e
        raise
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` as UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON with sorted keys and a final newline (byte-stable for equal objects)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


__all__ = [
    "atomic_path",
    "fsync_dir",
    "fsync_file",
    "leftovers",
    "temporary_path",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
