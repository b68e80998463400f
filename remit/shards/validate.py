"""`remit-annotate validate`: re-read every shard and check it against the manifest and the format.

Checks, per shard: the file's hash, that it parses, its schema, row count, list lengths, token
checksum, contiguous sample ids, row widths (seq_len + 1, only the output's last row shorter),
segment layout, NaN exactly at segment starts, weights in [1 - eps, 1 + eps], and that the stored
weights follow from the stored log-probs by the rule in the manifest. Each problem names the file,
the row where one is known, and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from remit.shards.checksum import file_sha256
from remit.shards.manifest import ShardError, read_manifest
from remit.shards.reader import read_shard
from remit.shards.weights import remit_weights

#: Stored float32 weights vs the rule recomputed in float64: rounding is ~6e-8.
WEIGHT_TOLERANCE = 1e-5
_MAX_ROW_PROBLEMS = 5
_RERUN = "delete this shard and its manifest entry's unit, then re-run the annotation to re-score it"


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.message.rstrip('.')}. Fix: {self.fix}"


def _rows(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask).tolist()


def validate_output(root: str | Path) -> list[Problem]:
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except ShardError as e:
        return [Problem(str(root / "manifest.json"), None, str(e), "re-run `remit-annotate finalize`")]
    problems: list[Problem] = []
    listed = {s["file"] for s in manifest.shards}
    for extra in sorted(p.name for p in root.glob("*.parquet") if p.name not in listed):
        problems.append(Problem(str(root / extra), None, "shard not listed in the manifest",
                                "remove it, or re-run finalize if it belongs to this run"))
    width = manifest.seq_len + 1
    next_id = 0
    for i, entry in enumerate(manifest.shards):
        path = root / entry["file"]
        is_last_shard = i == len(manifest.shards) - 1
        if entry["first_sample_id"] != next_id:
            problems.append(Problem(str(path), None, f"first sample id {entry['first_sample_id']}, expected {next_id}",
                                    "the manifest is inconsistent; re-run `remit-annotate finalize`"))
        next_id = entry["first_sample_id"] + entry["rows"]
        if not path.exists():
            problems.append(Problem(str(path), None, "missing", "restore it or re-run the annotation of its unit"))
            continue
        if file_sha256(path) != entry["file_sha256"]:
            problems.append(Problem(str(path), None, "file content differs from the manifest (sha256 mismatch)", _RERUN))
        try:
            table = read_shard(path, expected_checksum=entry["token_checksum"])
        except ShardError as e:
            problems.append(Problem(str(path), None, str(e).removeprefix(f"{path}: "), _RERUN))
            continue
        problems.extend(_check_table(table, entry, path, width, is_last_shard, manifest.eps, manifest.center))
    if next_id != manifest.total_rows:
        problems.append(Problem(str(root / "manifest.json"), None,
                                f"shards hold {next_id} rows, totals say {manifest.total_rows}",
                                "re-run `remit-annotate finalize`"))
    return problems


def _check_table(table, entry: dict, path: Path, width: int, is_last_shard: bool, eps: float,
                 center: str) -> list[Problem]:
    problems: list[Problem] = []
    f = str(path)
    first = entry["first_sample_id"]

    def row_problem(mask: np.ndarray, message: str, fix: str = _RERUN) -> None:
        bad = _rows(mask)
        for r in bad[:_MAX_ROW_PROBLEMS]:
            problems.append(Problem(f, r, message, fix))
        if len(bad) > _MAX_ROW_PROBLEMS:
            problems.append(Problem(f, None, f"{message} in {len(bad) - _MAX_ROW_PROBLEMS} more rows", fix))

    if table.num_rows != entry["rows"]:
        problems.append(Problem(f, None, f"{table.num_rows} rows, the manifest says {entry['rows']}", _RERUN))
        return problems
    ids = table.column("sample_id").to_numpy()
    row_problem(ids != np.arange(first, first + len(ids)), "sample id out of sequence")
    n_tok = table.column("n_tokens").to_numpy().astype(np.int64)
    short = n_tok != width
    if is_last_shard and len(short):
        short[-1] = n_tok[-1] > width or n_tok[-1] < 1
    row_problem(short, f"row width differs from seq_len + 1 = {width} (only the output's last row may be shorter)")

    seg_lists = ["segment_starts", "segment_doc_ids", "segment_doc_offsets", "segment_n_scored",
                 "segment_sum_weight", "segment_sum_discrepancy"]
    n_seg = pc.list_value_length(table.column("segment_starts")).to_numpy(zero_copy_only=False)
    for name in seg_lists[1:]:
        other = pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False)
        row_problem(other != n_seg, f"{name} has a different number of entries than segment_starts")
    starts = [np.asarray(s, np.int64) for s in table.column("segment_starts").to_pylist()]
    bad_layout = np.array([len(s) == 0 or s[0] != 0 or np.any(np.diff(s) <= 0) or s[-1] >= n
                           for s, n in zip(starts, n_tok)], dtype=bool)
    row_problem(bad_layout, "segment_starts must begin at 0, increase, and stay inside the row")
    if bad_layout.any():
        return problems

    flat = {c: pc.list_flatten(table.column(c)).to_numpy() for c in ("logp_base", "logp_rl", "weight")}
    row_of = np.repeat(np.arange(len(n_tok)), n_tok)
    offsets = np.concatenate([[0], np.cumsum(n_tok)])
    is_start = np.zeros(len(row_of), bool)
    is_start[np.concatenate([s + o for s, o in zip(starts, offsets[:-1])])] = True
    for c in ("logp_base", "logp_rl"):
        nan = np.isnan(flat[c])
        row_problem(np.bincount(row_of[nan != is_start], minlength=len(n_tok)) > 0,
                    f"{c} is NaN where it should not be, or not NaN at a segment's first token")
        row_problem(np.bincount(row_of[flat[c] > 0], minlength=len(n_tok)) > 0, f"{c} has a positive log-prob")
    w = flat["weight"]
    low, high = np.float32(1.0 - eps), np.float32(1.0 + eps)
    out_of_range = np.isnan(w) | (w < low) | (w > high)
    row_problem(np.bincount(row_of[out_of_range], minlength=len(n_tok)) > 0,
                f"weight outside [{low:.4g}, {high:.4g}] or NaN")
    row_problem(np.bincount(row_of[is_start & (w != 1.0)], minlength=len(n_tok)) > 0,
                "weight at a segment's first token is not 1.0")
    expected = remit_weights(flat["logp_rl"], flat["logp_base"], n_tok, starts, eps=eps, center=center)
    off_rule = np.abs(expected.astype(np.float64) - w) > WEIGHT_TOLERANCE
    row_problem(np.bincount(row_of[off_rule & ~out_of_range], minlength=len(n_tok)) > 0,
                f"weight does not follow from the log-probs by the manifest's rule (center={center}, eps={eps})")
    return problems
