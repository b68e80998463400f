"""Corpus readers: JSONL (plain or gzip), Parquet, folders of text files, `datasets` folders.

- Every reader yields, in a deterministic order, a `Record` (one document: text or token ids) or a
  `Skip` (a record that cannot be used, with the reason and where it is).
- The caller counts the skips, or fails on the first one under ``--strict``.
- `fingerprint` gives the inputs' part of the run identity.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".md")
_BATCH_ROWS = 1024


@dataclass
class Record:
    doc_id: str
    source: str
    index: int  # record number in its source (0-based)
    text: str | None = None
    tokens: np.ndarray | None = None  # pre-tokenized input


@dataclass
class Skip:
    source: str
    index: int  # record number in its source (0-based); line number - 1 for JSONL
    reason: str
    kind: str  # short category for the summary's counts

    def where(self) -> str:
        return f"{self.source} record {self.index}"


Item = Record | Skip


class InputError(ValueError):
    """An input path that cannot be used at all (raised before any work starts)."""


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    id: str = "id"
    tokens: str | None = None  # set for pre-tokenized input: the column holding token ids


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("state.json", "dataset_dict.json"))


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Resolve the input paths into an ordered list of readable sources; raise InputError on a bad path."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"input {p}: no such file or folder")
        if p.is_file():
            if not _has_suffix(p, JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES):
                raise InputError(
                    f"input {p}: unknown file type; expected one of "
                    f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)}"
                )
            out.append(p)
        elif is_datasets_folder(p):
            out.append(p)
        else:
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and _has_suffix(f, JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES)
            )
            if not files:
                raise InputError(
                    f"input {p}: folder holds no .jsonl/.jsonl.gz/.parquet/.txt files and is not a "
                    "`datasets` folder saved with save_to_disk"
                )
            out.extend(files)
    return out


def read_source(path: Path, fields: Fields) -> Iterator[Item]:
    """Records of one source in order. Errors inside a file become Skips; the file keeps being read
    where possible (JSONL line by line), otherwise its remainder is one Skip."""
    if is_datasets_folder(path):
        yield from _read_datasets(path, fields)
    elif _has_suffix(path, PARQUET_SUFFIXES):
        yield from _read_parquet(path, fields)
    elif _has_suffix(path, JSONL_SUFFIXES):
        yield from _read_jsonl(path, fields)
    else:
        yield from _read_text_file(path, fields)


def _record(obj: object, source: str, index: int, fields: Fields) -> Item:
    if not isinstance(obj, dict):
        return Skip(source, index, f"record is a {type(obj).__name__}, not an object", "not an object")
    raw_id = obj.get(fields.id)
    doc_id = str(raw_id) if raw_id is not None else f"{source}:{index}"
    if fields.tokens is not None:
        toks = obj.get(fields.tokens)
        if toks is None:
            return Skip(source, index, f"field {fields.tokens!r} missing", "missing field")
        try:
            arr = np.asarray(toks, dtype=np.int64)
        except (TypeError, ValueError):
            return Skip(source, index, f"field {fields.tokens!r} is not a list of integers", "not token ids")
        if arr.ndim != 1:
            return Skip(source, index, f"field {fields.tokens!r} is not a flat list of integers", "not token ids")
        return Record(doc_id, source, index, tokens=arr)
    text = obj.get(fields.text)
    if text is None:
        return Skip(source, index, f"field {fields.text!r} missing (set --text-field)", "missing field")
    if not isinstance(text, str):
        return Skip(source, index, f"field {fields.text!r} is a {type(text).__name__}, not a string", "not a string")
    return Record(doc_id, source, index, text=text)


def _read_jsonl(path: Path, fields: Fields) -> Iterator[Item]:
    source = str(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    index = -1
    try:
        with opener(path, "rb") as f:
            for index, raw in enumerate(f):
                if not raw.strip():
                    yield Skip(source, index, "blank line", "blank line")
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield Skip(source, index, f"not UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
                    continue
                except json.JSONDecodeError as e:
                    yield Skip(source, index, f"invalid JSON ({e.msg} at column {e.colno})", "invalid JSON")
                    continue
                yield _record(obj, source, index, fields)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        yield Skip(source, index + 1, f"unreadable from here on ({type(e).__name__}: {e})", "unreadable file")


def _read_table_batches(batches: Iterator, source: str, fields: Fields) -> Iterator[Item]:
    index = 0
    try:
        for batch in batches:
            for obj in batch.to_pylist():
                yield _record(obj, source, index, fields)
                index += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid (a corrupt page) is a ValueError
        yield Skip(source, index, f"unreadable from this record on ({type(e).__name__}: {e})", "unreadable file")


def _columns(names: list[str], fields: Fields, source: str) -> list[str]:
    want = fields.tokens if fields.tokens is not None else fields.text
    if want not in names:
        flag = "--token-field" if fields.tokens is not None else "--text-field"
        raise InputError(f"input {source}: no column {want!r} (columns: {names}); set {flag}")
    return [c for c in (want, fields.id) if c in names]


def _read_parquet(path: Path, fields: Fields) -> Iterator[Item]:
    import pyarrow.parquet as pq

    source = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        yield Skip(source, 0, f"unreadable Parquet file ({type(e).__name__}: {e})", "unreadable file")
        return
    cols = _columns(pf.schema_arrow.names, fields, source)
    yield from _read_table_batches(pf.iter_batches(batch_size=_BATCH_ROWS, columns=cols), source, fields)


def _read_datasets(path: Path, fields: Fields) -> Iterator[Item]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    splits = [(name, ds[name]) for name in sorted(ds)] if isinstance(ds, DatasetDict) else [("", ds)]
    for name, split in splits:
        source = f"{path}[{name}]" if name else str(path)
        cols = _columns(split.column_names, fields, source)
        table = split.select_columns(cols).with_format("arrow")
        yield from _read_table_batches(table.iter(batch_size=_BATCH_ROWS), source, fields)


def _read_text_file(path: Path, fields: Fields) -> Iterator[Item]:
    source = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        yield Skip(source, 0, f"not UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
        return
    except OSError as e:
        yield Skip(source, 0, f"unreadable ({e})", "unreadable file")
        return
    if fields.tokens is not None:
        yield Skip(source, 0, "text files cannot hold pre-tokenized input", "not token ids")
        return
    yield Record(doc_id=source, source=source, index=0, text=text)


def check_columns(paths: list[Path], fields: Fields) -> None:
    """Fail before any work starts when a Parquet or `datasets` input lacks the text (or token) column;
    reads schemas only."""
    import pyarrow.parquet as pq

    for path in paths:
        if is_datasets_folder(path):
            from datasets import DatasetDict, load_from_disk

            ds = load_from_disk(str(path))
            for name, split in [(n, ds[n]) for n in sorted(ds)] if isinstance(ds, DatasetDict) else [("", ds)]:
                _columns(split.column_names, fields, f"{path}[{name}]" if name else str(path))
        elif _has_suffix(path, PARQUET_SUFFIXES):
            try:
                names = pq.read_schema(path).names
            except Exception:  # an unreadable file is skipped and counted when it is read
                continue
            _columns(names, fields, str(path))


def read_inputs(paths: list[Path], fields: Fields) -> Iterator[Item]:
    for path in paths:
        yield from read_source(path, fields)


def fingerprint(paths: list[Path]) -> list[dict]:
    """Identity of the inputs for the run id: path and size of every file (not mtime: copies keep ids)."""
    out = []
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        out.append({"path": str(p.resolve()), "bytes": sum(f.stat().st_size for f in files)})
    return out
