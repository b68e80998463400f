"""`remit-annotate validate`: re-read every shard and check it against the manifest and the format.

Per shard:
- the file's sha256 against the manifest; that it parses as Parquet; its schema and row count;
- per row, every token-level list holds n_tokens values and every segment-level list one per segment;
- the token checksum and (format version 2) every column's checksum against the manifest; contiguous
  sample ids; row widths (seq_len + 1, only the
  output's last row shorter); the segment layout;
- NaN log-probs exactly at segment starts (the only non-finite value the format allows), no infinite
  or positive log-prob; finite weights in [1 - eps, 1 + eps] and 1.0 at segment starts; stored weights
  that follow from the stored log-probs by the manifest's rule. An output without both passes
  (``passes``: rl or none) holds NaN for the pass it lacks and weights of exactly 1.0.
Across shards: every document's segments follow each other without gap or overlap.

Each problem names the file, the row (0-based, in the file) and sample id where one is known, and what
to do. The checks are independent of the writer's own read-back, so a bad writer is caught too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.shards.checksum import column_checksums, file_sha256
from remit.shards.integrity import recorded_checksums
from remit.shards.manifest import Manifest, Passes, ShardError, confined, read_manifest, repair_command
from remit.shards.reader import list_length_mismatches, table_token_checksum
from remit.shards.schema import schema_mismatch
from remit.shards.weights import Center, remit_weights

#: Stored float32 weights vs the rule recomputed in float64: rounding is ~6e-8.
WEIGHT_TOLERANCE = 1e-5
_MAX_ROW_PROBLEMS = 5
#: Outputs without weights, by their passes (a pass they lack is NaN everywhere, every weight 1.0).
_WITHOUT = {"rl": "an RL-only output (--score rl)", "none": "a pack-only output"}
#: The fixes, for the output folder {root}: `remit-annotate repair` re-scores every shard that does not match
#: the manifest (sha256), and writes a manifest that does not match its shards again.
_RERUN = "run `{repair}`: it re-scores the shards that differ from the manifest and writes the manifest again"
_REFINALIZE = "the manifest is inconsistent with the shards; run `{repair}` to write it again"


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    message: str
    fix: str
    sample_id: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f" row {self.row}" + (f" (sample {self.sample_id})" if self.sample_id is not None else "")
        return f"{where}: {self.message.rstrip('.')}. Fix: {self.fix}"


@dataclass
class _DocCursor:
    """The last segment seen, carried across shards: documents may span shard boundaries."""

    doc_id: str | None = None
    next_offset: int = 0
    known: bool = True
    """False after a shard with problems: the next shard's first segment is then not judged."""


def validate_output(root: str | Path) -> list[Problem]:
    """Every check of an output: its listing (`validate_listing`) and each shard in order, documents
    followed across shard boundaries."""
    root = Path(root)
    problems = validate_listing(root)
    try:
        manifest = read_manifest(root)
    except ShardError:
        return problems  # the listing named the unreadable manifest
    width = manifest.seq_len + 1
    cursor = _DocCursor()
    found_in_shards: list[Problem] = []
    for i, entry in enumerate(manifest.shards):
        path = confined(root, entry["file"], index=i)  # read_manifest checked every entry already
        is_last_shard = i == len(manifest.shards) - 1
        found = _check_shard(path, entry, width, is_last_shard, manifest.eps, manifest.center, cursor, manifest.passes)
        if found:
            cursor = _DocCursor(known=False)  # this shard's documents are suspect: judge the next one afresh
        found_in_shards.extend(found)
    fix = repair_command(root)
    return problems + [replace(p, fix=p.fix.replace("{repair}", fix)) for p in found_in_shards]


def _read(path: Path) -> tuple[pa.Table | None, str | None]:
    """The shard's table, or None and what is wrong (unreadable, or the wrong schema)."""
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a truncated or corrupt footer
        return None, f"cannot be read as Parquet ({type(e).__name__}: {e}); the file is truncated or corrupt"
    mismatch = schema_mismatch(pf.schema_arrow)
    if mismatch:
        return None, f"wrong schema ({mismatch}); not written by this remit version, or altered"
    try:
        return pf.read(), None
    except Exception as e:  # a corrupt data page or a bad compressed block
        return None, f"cannot be read as Parquet ({type(e).__name__}: {e}); the file is corrupt"


def _check_shard(
    path: Path,
    entry: dict,
    width: int,
    is_last_shard: bool,
    eps: float,
    center: Center,
    cursor: _DocCursor,
    passes: Passes = "both",
) -> list[Problem]:
    f = str(path)
    if not path.exists():
        return [Problem(f, None, "missing", _RERUN)]
    problems: list[Problem] = []
    if file_sha256(path) != entry.get("file_sha256"):
        problems.append(Problem(f, None, "file content differs from the manifest (sha256 mismatch)", _RERUN))
    table, why = _read(path)
    if table is None:
        return problems + [Problem(f, None, str(why), _RERUN)]
    if table.num_rows != entry["rows"]:
        return problems + [Problem(f, None, f"{table.num_rows} rows, the manifest says {entry['rows']}", _RERUN)]
    ids = table.column("sample_id").to_numpy()
    row_problem = _RowProblems(f, ids, problems)
    if not _check_list_lengths(table, row_problem):
        return problems  # the flat value checks below need consistent lists
    got = table_token_checksum(table)
    if got != entry["token_checksum"]:
        problems.append(
            Problem(
                f,
                None,
                f"token checksum {got} differs from the manifest's {entry['token_checksum']}; "
                "the shard does not hold the tokens it was written with",
                _RERUN,
            )
        )
    sums = recorded_checksums(entry)  # None in format version 1, whose file hash is checked above
    if sums is not None:
        actual = column_checksums(table)
        bad = [name for name in actual if actual[name] != sums.get(name)]
        if bad:
            problems.append(
                Problem(
                    f,
                    None,
                    f"column(s) {', '.join(bad)} differ from the checksums in the manifest; the shard was changed "
                    "after it was written (the row checks below name the rows where the change breaks the "
                    "shard's consistency)",
                    _RERUN,
                )
            )
    first = entry["first_sample_id"]
    row_problem(ids != np.arange(first, first + len(ids)), "sample id out of sequence")
    n_tok = table.column("n_tokens").to_numpy().astype(np.int64)
    short = n_tok != width
    if is_last_shard and len(short):
        short[-1] = n_tok[-1] > width or n_tok[-1] < 1
    row_problem(short, f"row width differs from seq_len + 1 = {width} (only the output's last row may be shorter)")
    starts = [np.asarray(s, np.int64) for s in table.column("segment_starts").to_pylist()]
    bad_layout = np.array(
        [len(s) == 0 or s[0] != 0 or bool(np.any(np.diff(s) <= 0)) or s[-1] >= n for s, n in zip(starts, n_tok)],
        dtype=bool,
    )
    row_problem(bad_layout, "segment_starts must begin at 0, increase, and stay inside the row")
    if bad_layout.any():
        return problems
    _check_values(table, n_tok, starts, eps, center, row_problem, passes)
    _check_documents(table, n_tok, starts, cursor, row_problem)
    return problems


class _RowProblems:
    """Adds one problem per bad row (the first few, then a count), naming row and sample id."""

    def __init__(self, file: str, sample_ids: np.ndarray, out: list[Problem]) -> None:
        self.file, self.ids, self.out = file, sample_ids, out

    def __call__(self, bad_rows: np.ndarray, message: str, fix: str = _RERUN) -> None:
        bad = np.flatnonzero(bad_rows).tolist()
        for r in bad[:_MAX_ROW_PROBLEMS]:
            self.out.append(Problem(self.file, r, message, fix, int(self.ids[r])))
        if len(bad) > _MAX_ROW_PROBLEMS:
            self.out.append(Problem(self.file, None, f"{message} in {len(bad) - _MAX_ROW_PROBLEMS} more rows", fix))


def _check_list_lengths(table: pa.Table, row_problem: _RowProblems) -> bool:
    """Every token-level list has n_tokens values, every segment-level list one per segment. True if so."""
    bad = list_length_mismatches(table)
    for name, against, rows in bad:
        row_problem(rows, f"{name} has a different number of values than {against} says")
    return not bad


def _check_values(
    table: pa.Table,
    n_tok: np.ndarray,
    starts: list[np.ndarray],
    eps: float,
    center: Center,
    row_problem: _RowProblems,
    passes: Passes = "both",
) -> None:
    flat = {c: pc.list_flatten(table.column(c)).to_numpy() for c in ("logp_base", "logp_rl", "weight")}
    n_rows = len(n_tok)
    row_of = np.repeat(np.arange(n_rows), n_tok)
    offsets = np.concatenate([[0], np.cumsum(n_tok)])
    is_start = np.zeros(len(row_of), bool)
    is_start[np.concatenate([s + o for s, o in zip(starts, offsets[:-1])])] = True

    def rows_with(mask: np.ndarray) -> np.ndarray:
        return np.bincount(row_of[mask], minlength=n_rows) > 0

    scored = {"both": ("logp_base", "logp_rl"), "rl": ("logp_rl",), "none": ()}[passes]
    for c in ("logp_base", "logp_rl"):
        if c not in scored:  # a pass the output does not hold: every value NaN
            row_problem(rows_with(~np.isnan(flat[c])), f"{c} holds a value in {_WITHOUT[passes]} (all must be NaN)")
            continue
        nan = np.isnan(flat[c])
        infinite = np.isinf(flat[c])
        row_problem(
            rows_with(nan != is_start), f"{c} is NaN where it should not be, or not NaN at a segment's first token"
        )
        # -inf (a token the model gives probability 0) passes every range check but turns the online
        # weight, and with it the step's loss, into NaN.
        row_problem(
            rows_with(infinite),
            f"{c} is infinite (-inf or +inf); a log-prob must be finite (NaN only at a segment's first token)",
        )
        row_problem(rows_with((flat[c] > 0) & ~infinite), f"{c} has a positive log-prob")
    w = flat["weight"]
    if passes != "both":  # no weights without the base pass: every weight 1.0
        row_problem(rows_with(w != 1.0), f"weight is not 1.0 in {_WITHOUT[passes]}")
        return
    low, high = np.float32(1.0 - eps), np.float32(1.0 + eps)
    out_of_range = ~np.isfinite(w) | (w < low) | (w > high)
    row_problem(rows_with(out_of_range), f"weight outside [{low:.4g}, {high:.4g}] or not finite (NaN, inf)")
    row_problem(rows_with(is_start & (w != 1.0)), "weight at a segment's first token is not 1.0")
    expected = remit_weights(flat["logp_rl"], flat["logp_base"], n_tok, starts, eps=eps, center=center)
    off_rule = np.abs(expected.astype(np.float64) - w) > WEIGHT_TOLERANCE
    row_problem(
        rows_with(off_rule & ~out_of_range),
        f"weight does not follow from the log-probs by the manifest's rule (center={center}, eps={eps})",
    )


def _check_documents(
    table: pa.Table, n_tok: np.ndarray, starts: list[np.ndarray], cursor: _DocCursor, row_problem: _RowProblems
) -> None:
    """Each segment either starts a document (offset 0) or continues the previous segment's document
    exactly where it stopped, at the start of a row. A gap, an overlap or a repeat breaks this."""
    n_rows = len(n_tok)
    n_seg = np.array([len(s) for s in starts], np.int64)
    if not n_seg.sum():
        return
    seg_row = np.repeat(np.arange(n_rows), n_seg)
    in_row = np.concatenate(starts)
    row_start = np.concatenate([[0], np.cumsum(n_tok)])[:-1]
    pos = row_start[seg_row] + in_row
    seg_len = np.append(pos[1:], int(n_tok.sum())) - pos  # rows are contiguous: a segment ends where the next starts
    doc_ids = np.asarray(pc.list_flatten(table.column("segment_doc_ids")).to_pylist(), dtype=object)
    doc_off = pc.list_flatten(table.column("segment_doc_offsets")).to_numpy().astype(np.int64)
    prev_id = np.empty(len(doc_ids), dtype=object)
    prev_id[0] = cursor.doc_id if cursor.known else doc_ids[0]
    prev_id[1:] = doc_ids[:-1]
    prev_end = np.concatenate([[cursor.next_offset if cursor.known else doc_off[0]], (doc_off + seg_len)[:-1]])
    # offset 0 always starts a document (ids may repeat in a corpus); anything else must continue one.
    continues = (doc_ids == prev_id) & (doc_off == prev_end) & (in_row == 0)
    bad_seg = (doc_off != 0) & ~continues
    bad = np.zeros(n_rows, bool)
    bad[seg_row[bad_seg]] = True
    row_problem(
        bad,
        "a document segment does not continue its document where the previous segment stopped "
        "(a gap, overlap or repeated piece of a document)",
    )
    cursor.doc_id, cursor.next_offset, cursor.known = str(doc_ids[-1]), int(doc_off[-1] + seg_len[-1]), True


def validate_listing(root: str | Path) -> list[Problem]:
    """The checks of `validate_output` that read no shard: the manifest, the consecutive sample ids it
    lists, its totals, and no unlisted shard beside it. A trainer runs these once at start and
    `validate_shard` on each shard as a rank first reads it."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except ShardError as e:
        return [Problem(str(root / "manifest.json"), None, str(e), f"run `{repair_command(root)}`")]
    listed = {s["file"] for s in manifest.shards}
    problems = [
        Problem(
            str(root / extra),
            None,
            "shard not listed in the manifest",
            "move it out of the output folder (the views read every top-level *.parquet file)",
        )
        for extra in sorted(p.name for p in root.glob("*.parquet") if p.name not in listed)
    ]
    next_id = 0
    for index, entry in enumerate(manifest.shards):
        if entry["first_sample_id"] != next_id:
            path = str(confined(root, entry["file"], index=index))
            problems.append(
                Problem(path, None, f"first sample id {entry['first_sample_id']}, expected {next_id}", _REFINALIZE)
            )
        next_id = entry["first_sample_id"] + entry["rows"]
    if next_id != manifest.total_rows:
        problems.append(
            Problem(
                str(root / "manifest.json"),
                None,
                f"shards hold {next_id} rows, totals say {manifest.total_rows}",
                _REFINALIZE,
            )
        )
    fix = repair_command(root)
    return [replace(p, fix=p.fix.replace("{repair}", fix)) for p in problems]


def validate_shard(root: str | Path, manifest: Manifest, index: int) -> list[Problem]:
    """The checks of `validate_output` for shard `index` alone: every check within the shard; a document
    that continues from the previous shard is not judged at its first segment (that needs the
    previous shard, which `validate_output` reads in order)."""
    root = Path(root)
    entry = manifest.shards[index]
    found = _check_shard(
        confined(root, entry["file"], index=index),
        entry,
        manifest.seq_len + 1,
        index == len(manifest.shards) - 1,
        manifest.eps,
        manifest.center,
        _DocCursor(known=False),
        manifest.passes,
    )
    fix = repair_command(root)
    return [replace(p, fix=p.fix.replace("{repair}", fix)) for p in found]
