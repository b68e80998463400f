"""Content hashes of input and model files, cached by file identity so that a rerun does not read them again.

- `content_sha256(path)`: the sha256 of a file's bytes. A cached value is used only while the file's
  resolved path, size, modification and change times (ns), inode and device are all unchanged; an edit
  in place changes the modification time, and restoring that by hand changes the change time.
- The cache is one JSON file, ``REMIT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/remit``, else
  ``~/.cache/remit``) / ``content-hashes.json``, rewritten atomically. Concurrent writers may lose each
  other's new entries (the file is re-hashed next time), never corrupt the cache. Where the folder is
  not writable, hashes are computed and not cached.
- `combine`: one hash over a list of lines (names and file hashes), e.g. a folder's or a model's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

CACHE_FILE = "content-hashes.json"
#: Entries kept; the least recently used go first.
MAX_ENTRIES = 100_000
_CHUNK = 1 << 22


def cache_dir() -> Path:
    if os.environ.get("REMIT_CACHE_DIR"):
        return Path(os.environ["REMIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "remit"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class HashCache:
    """The on-disk cache; loaded lazily, saved by `flush` (also called by `content_sha256`)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.path = (folder or cache_dir()) / CACHE_FILE
        self.entries: dict[str, dict[str, Any]] | None = None
        self.dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.entries is None:
            try:
                data = json.loads(self.path.read_text())
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}
        return self.entries

    def sha256(self, path: str | Path) -> str:
        p = Path(path).resolve()
        st = p.stat()
        key = str(p)
        entry = self._load().get(key)
        if isinstance(entry, dict) and entry.get("id") == _identity(st) and isinstance(entry.get("sha256"), str):
            entry["used"] = int(time.time())
            return str(entry["sha256"])
        digest = _hash_file(p)
        if _identity(p.stat()) != _identity(st):  # written while we read it: do not cache a torn view
            return digest
        self._load()[key] = {"id": _identity(st), "sha256": digest, "used": int(time.time())}
        self.dirty = True
        return digest

    def flush(self) -> None:
        if not self.dirty or self.entries is None:
            return
        from remit.common.atomic import write_text_atomic

        entries = self.entries
        if len(entries) > MAX_ENTRIES:
            keep = sorted(entries, key=lambda k: entries[k].get("used", 0), reverse=True)[:MAX_ENTRIES]
            entries = {k: entries[k] for k in keep}
        try:
            # Merge with what other processes saved meanwhile, so that their entries survive ours.
            on_disk = HashCache(self.path.parent)._load()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({**on_disk, **entries}, sort_keys=True))
        except OSError:
            pass  # no cache where the folder is not writable: the hashes are still right
        self.dirty = False


def content_sha256(path: str | Path, cache: HashCache | None = None) -> str:
    """sha256 of the file at `path` ("sha256:<hex>"), from the cache when the file is unchanged."""
    own = cache is None
    c = cache if cache is not None else HashCache()
    digest = c.sha256(path)
    if own:
        c.flush()
    return digest


def combine(lines: list[str]) -> str:
    """One sha256 over `lines` (each already ending in a newline)."""
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


__all__ = ["CACHE_FILE", "HashCache", "cache_dir", "combine", "content_sha256"]
