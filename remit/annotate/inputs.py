"""Corpus readers: JSONL and text files (plain, gzip, zstd, bz2 or xz), Parquet, `datasets` folders.

- `scan_inputs` turns the input paths into sources, in a deterministic order. Inside a folder, a file of
  no known input type is never read: it is listed (`InputScan.ignored`) for the run's summary.
- Every reader yields, in order, a `Record` (one document: text or token ids) or a `Skip`: a record, or
  a part of a file, that cannot be used, with where it is, why, and how many records it stands for.
  The caller counts the skips, or fails on the first one under ``--strict``.
- What a damaged file gives (docs/scaling.md, "Inputs"):
  * plain JSONL: every line on its own; a cut last line is one skipped record;
  * compressed JSONL or text: the stream is decompressed once to check it before it is read. A stream
    cut short (truncated) keeps the records before the cut and skips the cut one; a stream that fails
    its integrity check (a corrupt block, a checksum) is skipped whole, because what was decoded before
    the failure cannot be trusted either; a compressed text file is one document, skipped when damaged;
  * Parquet: row group by row group, page checksums verified where the file has them; a row group that
    cannot be read is skipped with its remaining rows counted, the other row groups are kept; an
    unreadable footer skips the file;
  * a `datasets` folder that cannot be loaded is skipped whole.
- `fingerprint`: the inputs' part of the run identity, with a content hash of every file read.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from remit.annotate.hashcache import HashCache, combine

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIXES = (".parquet",)
#: Compression by the file name's last suffix (JSONL and text files only: Parquet compresses inside).
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
BOM = b"\xef\xbb\xbf"
_BATCH_ROWS = 1024
_CHUNK_BYTES = 1 << 20

Kind = Literal["jsonl", "text", "parquet"]


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
    records: int = 1
    """Records this skip stands for (a Parquet row group's remaining rows, ...)."""

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


# -- file types ------------------------------------------------------------------------------------------


def compression(path: Path) -> str | None:
    """The compression of a JSONL or text file, by its last suffix (None: plain)."""
    return COMPRESSIONS.get(Path(path).suffix.lower())


def input_kind(path: Path) -> Kind | None:
    """What a file is by its name: JSONL, text or Parquet (compressed or not), else None."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    suffix = Path(name).suffix
    if suffix in COMPRESSIONS:
        name = name[: -len(suffix)]
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def known_types() -> str:
    bases = ", ".join(JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES)
    return f"{bases} (JSONL and text also as {', '.join(sorted(COMPRESSIONS))})"


def is_datasets_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("state.json", "dataset_dict.json"))


def dataset_splits(path: Path) -> list[str] | None:
    """The split names a `DatasetDict` folder (save_to_disk, with dataset_dict.json) records, in its order;
    None for a plain `Dataset` folder."""
    listing = path / "dataset_dict.json"
    if not listing.exists():
        return None
    try:
        splits = json.loads(listing.read_text()).get("splits")
    except (OSError, ValueError, AttributeError) as e:
        raise InputError(f"input {listing}: unreadable ({type(e).__name__}: {e}); save the DatasetDict again") from e
    if not isinstance(splits, list) or not splits or not all(isinstance(n, str) and n for n in splits):
        raise InputError(f"input {listing}: 'splits' is not a list of split names; save the DatasetDict again")
    return splits


# -- scanning the input paths ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputScan:
    """The sources found under the input paths, in reading order, and the files left out."""

    sources: list[Path]
    groups: list[tuple[Path, list[Path]]]
    """Each input path as given, with the sources found under it (a file: itself; a DatasetDict: the
    folder of each split read)."""
    ignored: list[Path]
    """Everything under the input folders that is not read: files of no known input type, and the entries
    `reasons` names (a broken symlink, a special file, an unreadable folder, a folder reached twice through
    symlinks, a split not chosen with --split)."""
    reasons: dict[Path, str] = field(default_factory=dict)
    """Why an entry of `ignored` is not read, where it is not simply a file of no known input type."""
    splits: dict[Path, list[str]] = field(default_factory=dict)
    """DatasetDict folder -> the splits read from it."""
    names: dict[Path, Path] = field(default_factory=dict)
    """Source -> the name its records carry, where it is not the source's own path (`named`)."""

    def named(self, spellings: Sequence[Path]) -> InputScan:
        """This scan with each input path's sources named under `spellings` (one per input path, in
        order): the spelling a run recorded, so that a source read here through another path (a run
        repaired from another working folder) carries the name it had."""
        if len(spellings) != len(self.groups):
            return self
        names: dict[Path, Path] = {}
        for (given, sources), spelled in zip(self.groups, spellings, strict=True):
            under = [p for p in self.ignored if given in p.parents]  # entries of this input folder not read
            for s in [*sources, *under]:
                name = spelled if s == given else spelled / s.relative_to(given)
                if name != s:
                    names[s] = name
        return dataclasses.replace(self, names=names)

    def not_read(self, path: Path) -> str:
        """`path` (an entry of `ignored`, by its name), with why it is not read unless it is a file of no
        known input type."""
        name = self.names.get(path, path)
        return f"{name}: {self.reasons[path]}" if path in self.reasons else str(name)


@dataclass
class _Found:
    sources: list[Path] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    reasons: dict[Path, str] = field(default_factory=dict)
    splits: dict[Path, list[str]] = field(default_factory=dict)

    def skip(self, path: Path, reason: str | None = None) -> None:
        self.ignored.append(path)
        if reason is not None:
            self.reasons[path] = reason

    def add_datasets(self, path: Path, wanted: Sequence[str]) -> None:
        """A `datasets` folder: one source, or one per split read of a DatasetDict (see `choose_splits`)."""
        names = dataset_splits(path)
        if names is None:
            self.sources.append(path)
            return
        chosen = choose_splits(path, names, wanted)
        self.splits[path] = chosen
        for name in names:
            if name in chosen:
                self.sources.append(path / name)
            else:
                self.skip(path / name, f"split {name!r} of the DatasetDict {path}, not chosen with --split")


def choose_splits(path: Path, names: list[str], wanted: Sequence[str]) -> list[str]:
    """The splits of the DatasetDict at `path` to read: its only split, or those named by --split; refuse
    a DatasetDict with several splits and no --split, and one that holds none of the splits named."""
    listed = ", ".join(names)
    if not wanted:
        if len(names) == 1:
            return names
        raise InputError(
            f"input {path}: a DatasetDict with {len(names)} splits ({listed}); name the ones to read with --split "
            f"(repeatable), e.g. --split {names[0]}"
        )
    chosen = [n for n in names if n in wanted]
    if not chosen:
        raise InputError(
            f"input {path}: holds none of the splits given by --split ({', '.join(wanted)}); its splits: {listed}"
        )
    return chosen


def _walk(folder: Path, splits: Sequence[str] = ()) -> _Found:
    """Every entry under `folder`: sources (a `datasets` folder inside is one, or one per split read) and
    what is not read, with why. Symlinked folders are followed, each real folder once."""
    found = _Found()
    seen: dict[tuple[int, int], Path] = {}

    def unreadable(e: OSError) -> None:
        found.skip(Path(e.filename), f"folder cannot be read ({e.strerror})")

    for root, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        here = Path(root)
        dirs.sort()  # a fixed order, so that which of two links to one folder is read does not vary
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink: read once, listed here
            found.skip(here, f"the same folder as {seen[(st.st_dev, st.st_ino)]} (a symlink loop or a second link)")
            dirs.clear()
            continue
        seen[(st.st_dev, st.st_ino)] = here
        for d in sorted(dirs):
            if is_datasets_folder(here / d):
                found.add_datasets(here / d, splits)
                dirs.remove(d)
        for f in files:
            p = here / f
            if p.is_symlink() and not p.exists():
                found.skip(p, f"a broken symlink (to {os.readlink(p)})")
            elif not p.is_file():
                found.skip(p, "not a regular file (a pipe, socket or device)")
            elif input_kind(p) is not None:
                found.sources.append(p)
            else:
                found.skip(p)
    found.sources.sort()
    found.ignored.sort()
    return found


def scan_inputs(paths: Sequence[str | Path], splits: Sequence[str] = ()) -> InputScan:
    """Resolve the input paths into sources; raise InputError on a path that cannot be used at all.

    `splits` (--split) chooses the splits read from a DatasetDict folder with several."""
    sources: list[Path] = []
    groups: list[tuple[Path, list[Path]]] = []
    total = _Found()
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"input {p}: no such file or folder")
        if p.is_file():
            if input_kind(p) is None:
                raise InputError(f"input {p}: unknown file type; expected one of {known_types()}")
            found = [p]
        elif is_datasets_folder(p):
            one = _Found()
            one.add_datasets(p, splits)
            found = one.sources
            total.ignored += one.ignored
            total.reasons.update(one.reasons)
            total.splits.update(one.splits)
        elif p.is_dir():
            walked = _walk(p, splits)
            found = walked.sources
            if not found:
                left = walked.ignored
                listed = f" (it holds {len(left)} other entries, e.g. {walked_reason(walked, left[0])})" if left else ""
                raise InputError(
                    f"input {p}: folder holds no input files{listed}: expected {known_types()} files or a "
                    "`datasets` folder saved with save_to_disk"
                )
            total.ignored += walked.ignored
            total.reasons.update(walked.reasons)
            total.splits.update(walked.splits)
        else:
            raise InputError(f"input {p}: not a regular file or folder (a pipe, socket or device)")
        sources += found
        groups.append((p, found))
    return InputScan(sources, groups, total.ignored, total.reasons, total.splits)


def walked_reason(found: _Found, path: Path) -> str:
    return f"{path.name} ({found.reasons[path]})" if path in found.reasons else path.name


def expand_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """The sources of the input paths, in reading order (see `scan_inputs`)."""
    return scan_inputs(paths).sources


def check_inside(inputs: Sequence[Path], output: Path) -> None:
    """Refuse an input inside the output folder, and an output inside an input folder (whose scan would
    read the shards back as documents)."""
    out = Path(output).resolve()
    for p in inputs:
        src = Path(p).resolve()
        if src == out or out in src.parents:
            raise InputError(
                f"input {p} lies inside the output folder {output}; remit writes and deletes files there. Move the "
                "input out of it, or choose another --output."
            )
        if src.is_dir() and src in out.parents:
            raise InputError(
                f"--output {output} lies inside the input folder {p}: a later scan of the folder would read the "
                "shards as documents. Choose an --output outside the input folders."
            )


# -- records ---------------------------------------------------------------------------------------------


def _surrogate(text: str) -> int | None:
    """Offset of the first unpaired UTF-16 surrogate in `text` (not valid Unicode text), else None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def _token_problem(toks: Any, field: str) -> str | None:
    """Why `toks` is not a flat list of integer token ids (None when it is)."""
    if not isinstance(toks, list):
        return f"field {field!r} is a {type(toks).__name__}, not a list of integer token ids"
    for i, t in enumerate(toks):
        if type(t) is not int:  # bool is an int subclass, and floats or digit strings are not token ids
            return f"field {field!r} holds a {type(t).__name__} ({t!r:.40}) at position {i}, not an integer token id"
    return None


def _record(obj: object, source: str, index: int, fields: Fields) -> Item:
    if not isinstance(obj, dict):
        return Skip(source, index, f"record is a {type(obj).__name__}, not an object", "not an object")
    raw_id = obj.get(fields.id)
    if raw_id is None:
        doc_id = f"{source}:{index}"
    elif isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        return Skip(
            source, index, f"field {fields.id!r} is a {type(raw_id).__name__}, not a string or an integer", "bad id"
        )
    else:
        doc_id = str(raw_id)
        at = _surrogate(doc_id)
        if at is not None:
            return Skip(
                source,
                index,
                f"field {fields.id!r} holds an unpaired surrogate at character {at}",
                "unpaired surrogate",
            )
    if fields.tokens is not None:
        toks = obj.get(fields.tokens)
        if toks is None:
            return Skip(source, index, f"field {fields.tokens!r} missing (set --token-field)", "missing field")
        problem = _token_problem(toks, fields.tokens)
        if problem is not None:
            return Skip(source, index, problem, "not token ids")
        if toks and (min(toks) < 0 or max(toks) >= 1 << 31):
            bad = next(t for t in toks if t < 0 or t >= 1 << 31)
            return Skip(source, index, f"token id {bad} is not a vocabulary index", "token id out of range")
        return Record(doc_id, source, index, tokens=np.asarray(toks, dtype=np.int64).reshape(-1))
    text = obj.get(fields.text)
    if text is None:
        return Skip(source, index, f"field {fields.text!r} missing (set --text-field)", "missing field")
    if not isinstance(text, str):
        return Skip(source, index, f"field {fields.text!r} is a {type(text).__name__}, not a string", "not a string")
    at = _surrogate(text)
    if at is not None:
        return Skip(
            source,
            index,
            f"field {fields.text!r} holds an unpaired surrogate (U+{ord(text[at]):04X}) at character {at}: not valid "
            "Unicode text",
            "unpaired surrogate",
        )
    return Record(doc_id, source, index, text=text)


#: Skip kinds that stand for a whole file (or the rest of one) that could not be read.
FILE_KINDS = ("corrupt file", "unreadable file", "truncated file", "corrupt row group")
#: Skip kinds that point at the flag naming the text or token field, and at --id-field.
_FIELD_KINDS = {"missing field": "text", "not a string": "text", "not token ids": "text", "bad id": "id"}


def no_usable_documents(skipped: dict[str, int], examples: Sequence[str]) -> str:
    """The error for inputs that gave no document: how many records were skipped and why, the first few
    skipped records or files (a damaged file by name), and the fix their kinds point at."""
    total = sum(skipped.values())
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    message = (
        f"no usable documents in the inputs ({total} records skipped: {counts})"
        if skipped
        else ("no usable documents in the inputs: they hold no records (empty files)")
    )
    if examples:
        message += "; " + "; ".join(examples[:3]) + (f"; ... {len(examples) - 3} more" if len(examples) > 3 else "")
    fixes = []
    if any(_FIELD_KINDS.get(k) == "text" for k in skipped):
        fixes.append("check --text-field / --token-field (the field that holds each document)")
    if "bad id" in skipped:
        fixes.append("check --id-field: it must name a string or integer field (or a field the records lack)")
    if any(k in FILE_KINDS for k in skipped):
        fixes.append("repair or re-create the damaged file(s) named above")
    if any(k not in _FIELD_KINDS and k not in FILE_KINDS for k in skipped):
        fixes.append("fix the records named above")
    return message + (". Fix: " + "; ".join(fixes) if fixes else "")


# -- byte streams ----------------------------------------------------------------------------------------


class StreamError(Exception):
    """A file whose bytes could not all be read: cut short (`truncated`), corrupt, or unreadable."""

    def __init__(self, kind: Literal["truncated", "corrupt", "unreadable"], detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _open(path: Path, codec: str | None) -> Any:
    if codec is None:
        return open(path, "rb")
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "bz2":
        return bz2.open(path, "rb")
    if codec == "xz":
        return lzma.open(path, "rb")
    import pyarrow as pa  # zstd: pyarrow's codec, so that no other package is needed

    return pa.CompressedInputStream(pa.OSFile(str(path)), "zstd")


def byte_chunks(path: Path) -> Iterator[bytes]:
    """The file's (decompressed) bytes in chunks; a failure becomes a StreamError saying which kind."""
    codec = compression(path)
    try:
        with _open(path, codec) as f:
            # read1: one decompression step per call, so that a stream cut short loses no byte decoded before
            # the cut (read(n) would drop its partial result); pyarrow's stream has no read1, small reads
            # keep what it drops small.
            read = f.read1 if hasattr(f, "read1") else f.read
            size = _CHUNK_BYTES if hasattr(f, "read1") else _CHUNK_BYTES >> 4
            while chunk := read(size):
                yield chunk
    except EOFError as e:  # gzip, bz2, xz: the stream ends before its end marker
        raise StreamError("truncated", f"{type(e).__name__}: {e}") from None
    except (zlib.error, lzma.LZMAError) as e:
        raise StreamError("corrupt", f"{type(e).__name__}: {e}") from None
    except OSError as e:
        if e.errno is not None:  # the file system's error (EIO, EACCES, ...), not the data's
            raise StreamError("unreadable", f"{type(e).__name__}: {e}") from None
        # gzip/bz2 (bad header, CRC), pyarrow's zstd (its truncation message, or a failed frame)
        kind: Literal["truncated", "corrupt"] = "truncated" if "truncated" in str(e).lower() else "corrupt"
        raise StreamError(kind, f"{type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class StreamCheck:
    """What reading a compressed file to its end found."""

    error: StreamError | None
    lines: int
    """Complete lines before the failure (all of them when there is none)."""
    offset: int
    """Decompressed bytes before the failure."""


def check_stream(path: Path) -> StreamCheck:
    lines = offset = 0
    try:
        for chunk in byte_chunks(path):
            lines += chunk.count(b"\n")
            offset += len(chunk)
    except StreamError as e:
        return StreamCheck(e, lines, offset)
    return StreamCheck(None, lines, offset)


def _damaged(source: str, index: int, error: StreamError, kept: int) -> Skip:
    if error.kind == "truncated":
        return Skip(
            source,
            index,
            f"the file ends inside its compressed stream ({error.detail}): the {kept} complete records read before "
            "the cut are kept, the rest of the file is lost",
            "truncated file",
        )
    return Skip(source, index, f"unreadable from here on ({error.detail})", "unreadable file")


# -- readers ---------------------------------------------------------------------------------------------


def read_source(path: Path, fields: Fields, name: Path | None = None) -> Iterator[Item]:
    """Records of one source in order; errors inside it become Skips (see the module docstring).

    `name`: how the source is named in the records (default: `path`), e.g. the spelling a run recorded
    for an input that is read here through another path."""
    name = path if name is None else name
    if is_datasets_folder(path):
        yield from _read_datasets(path, fields, name)
        return
    kind = input_kind(path)
    if kind == "parquet":
        yield from _read_parquet(path, fields, name)
    elif kind == "jsonl":
        yield from _read_jsonl(path, fields, name)
    else:
        yield from _read_text_file(path, fields, name)


def _corrupt_file(name: Path, check: StreamCheck) -> Skip:
    assert check.error is not None
    return Skip(
        str(name),
        0,
        f"corrupt compressed data ({check.error.detail}) after {check.lines} lines: the file fails its integrity "
        f"check, so none of it is used ({check.lines} or more records lost). Repair or re-create the file",
        "corrupt file",
        records=max(1, check.lines),
    )


def _read_jsonl(path: Path, fields: Fields, name: Path) -> Iterator[Item]:
    source = str(name)
    if compression(path) is not None:
        check = check_stream(path)
        if check.error is not None and check.error.kind != "truncated":
            yield _corrupt_file(name, check)
            return
    index = 0
    pending = b""
    try:
        for chunk in byte_chunks(path):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                yield _jsonl_record(raw, source, index, fields)
                index += 1
    except StreamError as e:
        yield _damaged(source, index, e, index)
        return
    if pending:  # a last line without a newline: a record like any other
        yield _jsonl_record(pending, source, index, fields)


def _jsonl_record(raw: bytes, source: str, index: int, fields: Fields) -> Item:
    if raw.startswith(BOM):
        return Skip(
            source,
            index,
            "the line starts with a UTF-8 byte-order mark (U+FEFF), which is not JSON; save the file as UTF-8 "
            "without a BOM",
            "byte-order mark",
        )
    if not raw.strip():
        return Skip(source, index, "blank line", "blank line")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Skip(source, index, f"not UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
    except json.JSONDecodeError as e:
        return Skip(source, index, f"invalid JSON ({e.msg} at column {e.colno})", "invalid JSON")
    except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits; nesting too deep
        return Skip(source, index, f"invalid JSON ({type(e).__name__}: {str(e)[:80]})", "invalid JSON")
    return _record(obj, source, index, fields)


def _columns(names: list[str], fields: Fields, source: str) -> list[str]:
    want = fields.tokens if fields.tokens is not None else fields.text
    if want not in names:
        flag = "--token-field" if fields.tokens is not None else "--text-field"
        raise InputError(f"input {source}: no column {want!r} (columns: {names}); set {flag}")
    return [c for c in (want, fields.id) if c in names]


def _read_parquet(path: Path, fields: Fields, name: Path) -> Iterator[Item]:
    import pyarrow.parquet as pq

    source = str(name)
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
        groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    except Exception as e:  # pyarrow raises several types for a truncated or corrupt footer
        size = path.stat().st_size if path.exists() else 0
        yield Skip(
            source,
            0,
            f"unreadable Parquet file ({type(e).__name__}: {e}); the whole file ({size:,} bytes, its record count "
            "unknown) is skipped",
            "unreadable file",
        )
        return
    cols = _columns(pf.schema_arrow.names, fields, source)
    first = 0
    for g, rows in enumerate(groups):
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=[g], columns=cols):
                for obj in batch.to_pylist():
                    yield _record(obj, source, first + done, fields)
                    done += 1
        except Exception as e:  # a corrupt page or compressed block, a checksum that does not match
            yield Skip(
                source,
                first + done,
                f"row group {g} is unreadable from here on ({type(e).__name__}: {str(e)[:200]}); its remaining "
                f"{rows - done} records are skipped, the file's other row groups are read",
                "corrupt row group",
                records=max(1, rows - done),
            )
        first += rows


def _load_datasets(path: Path) -> list[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    return [(name, ds[name]) for name in sorted(ds)] if isinstance(ds, DatasetDict) else [("", ds)]


def _label(path: Path, name: str, shown: Path | None = None) -> str:
    """How records of a `datasets` source are named: ``FOLDER[split]`` for a split of a DatasetDict
    (`shown`: the source's name, default `path`)."""
    shown = path if shown is None else shown
    if not name and (path.parent / "dataset_dict.json").exists():
        shown, name = shown.parent, shown.name
    return f"{shown}[{name}]" if name else str(shown)


def _read_datasets(path: Path, fields: Fields, shown: Path) -> Iterator[Item]:
    try:
        splits = _load_datasets(path)
    except Exception as e:  # datasets raises many types for a damaged folder
        yield Skip(
            str(shown), 0, f"cannot be loaded as a `datasets` folder ({type(e).__name__}: {e})", "unreadable file"
        )
        return
    for name, split in splits:
        source = _label(path, name, shown)
        cols = _columns(split.column_names, fields, source)
        index = 0
        try:
            for batch in split.select_columns(cols).with_format("arrow").iter(batch_size=_BATCH_ROWS):
                for obj in batch.to_pylist():
                    yield _record(obj, source, index, fields)
                    index += 1
        except Exception as e:  # a damaged Arrow file
            lost = len(split) - index
            yield Skip(
                source, index, f"unreadable from here on ({type(e).__name__}: {e})", "unreadable file", max(1, lost)
            )


def _read_text_file(path: Path, fields: Fields, name: Path) -> Iterator[Item]:
    """A text file is one document: kept whole or skipped whole."""
    source = str(name)
    if fields.tokens is not None:
        yield Skip(source, 0, "text files cannot hold pre-tokenized input", "not token ids")
        return
    try:
        data = b"".join(byte_chunks(path))
    except StreamError as e:
        kind = {"truncated": "truncated file", "corrupt": "corrupt file"}.get(e.kind, "unreadable file")
        yield Skip(source, 0, f"{e.kind} ({e.detail}); the document is skipped", kind)
        return
    if data.startswith(BOM):
        yield Skip(
            source, 0, "starts with a UTF-8 byte-order mark (U+FEFF); save it as UTF-8 without a BOM", "byte-order mark"
        )
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Skip(source, 0, f"not UTF-8 ({e.reason} at byte {e.start})", "not UTF-8")
        return
    yield Record(doc_id=source, source=source, index=0, text=text)


def check_columns(paths: list[Path], fields: Fields) -> None:
    """Fail before any work starts when a Parquet or `datasets` input lacks the text (or token) column;
    reads schemas only (an unreadable file is skipped and counted when it is read)."""
    import pyarrow.parquet as pq

    for path in paths:
        if is_datasets_folder(path):
            try:
                splits = _load_datasets(path)
            except Exception:
                continue
            for name, split in splits:
                _columns(split.column_names, fields, _label(path, name))
        elif input_kind(path) == "parquet":
            try:
                names = pq.read_schema(path).names
            except Exception:
                continue
            _columns(names, fields, str(path))


def read_inputs(paths: list[Path], fields: Fields, names: Mapping[Path, Path] | None = None) -> Iterator[Item]:
    """Records of the sources in order; `names` maps a source to the name its records carry (see
    `InputScan.names`)."""
    for path in paths:
        yield from read_source(path, fields, (names or {}).get(path))


def _files(source: Path) -> list[Path]:
    return sorted(f for f in source.rglob("*") if f.is_file()) if source.is_dir() else [source]


def fingerprint(scan: InputScan | list[Path]) -> list[dict[str, Any]]:
    """The inputs' part of the run identity: per input path, its resolved path, the number and size of the
    files read under it, and a sha256 over their names and contents (cached by file identity, so a rerun
    does not read them again). An edited corpus is a different run, whatever its size."""
    groups = scan.groups if isinstance(scan, InputScan) else [(p, [p]) for p in scan]
    cache = HashCache()
    out = []
    for given, sources in groups:
        root = given.resolve()
        lines = []
        size = 0
        files = [f for s in sources for f in _files(s)]
        for f in files:
            size += f.stat().st_size
            rel = f.relative_to(given) if f != given else Path(f.name)
            lines.append(f"{rel.as_posix()}\0{cache.sha256(f)}\n")
        entry: dict[str, Any] = {"path": str(root), "bytes": size, "files": len(files), "sha256": combine(lines)}
        if str(given) != str(root):  # the spelling names the records (their source): kept to name them again
            entry["given"] = str(given)
        splits = {
            (d.relative_to(given).as_posix() if d != given else "."): names
            for d, names in (scan.splits.items() if isinstance(scan, InputScan) else [])
            if d == given or given in d.parents
        }
        if splits:  # DatasetDict folder (relative to the input path) -> the splits read from it
            entry["splits"] = splits
        out.append(entry)
    cache.flush()
    return out
