"""`remit-annotate validate`: each corruption, injected into a copy of a finished output, is caught and
named with its file (and row, where a row is at fault); a clean output passes; the CLI exits non-zero.

Corruptions of content are injected twice where it matters: once as they would happen on disk (the
manifest's hash then disagrees too), and once "resealed" with the manifest's hash updated, as a bad
writer would leave them, so that the specific check, not only the hash, is shown to catch them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remit.annotate.cli import main
from remit.shards.checksum import column_checksums, file_sha256
from remit.shards.synthetic import make_output
from remit.shards.validate import Problem, validate_output
from remit.shards.writer import write_table

SHARD = "shard-00001.parquet"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_output(tmp_path_factory.mktemp("validate") / "clean", n_docs=40, seq_len=64, rows_per_shard=8, seed=3)


@pytest.fixture
def out(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "out"))


def reseal(root: Path, name: str, columns: bool = True) -> None:
    """Update the manifest's hash, column checksums and size of `name` (what a writer that checks nothing
    would do)."""
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["shards"]:
        if entry["file"] == name:
            entry["file_sha256"] = file_sha256(root / name)
            if columns:
                entry["column_checksums"] = column_checksums(pq.read_table(root / name))
            entry["bytes"] = (root / name).stat().st_size
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def edit_column(root: Path, name: str, column: str, edit: Callable[[list], None]) -> None:
    """Rewrite shard `name` with `edit` applied to `column`'s Python values, keeping the schema."""
    table = pq.read_table(root / name)
    values = table.column(column).to_pylist()
    edit(values)
    i = table.schema.get_field_index(column)
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    write_table(table, root / name)


def about(problems: list[Problem], file: str, row: int | None = None, text: str = "") -> list[Problem]:
    return [p for p in problems if Path(p.file).name == file and (row is None or p.row == row) and text in p.message]


def test_a_clean_output_passes(clean, capsys):
    assert validate_output(clean) == []
    assert main(["validate", str(clean)]) == 0
    assert "valid" in capsys.readouterr().out


def test_truncated_file(out):
    data = (out / SHARD).read_bytes()
    (out / SHARD).write_bytes(data[: len(data) // 2])
    problems = validate_output(out)
    assert about(problems, SHARD, text="truncated or corrupt")
    assert about(problems, SHARD, text="sha256 mismatch")
    assert all(Path(p.file).name == SHARD for p in problems), problems


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte(out, where):
    data = bytearray((out / SHARD).read_bytes())
    data[int(len(data) * where)] ^= 0x01
    (out / SHARD).write_bytes(bytes(data))
    problems = validate_output(out)
    assert about(problems, SHARD, text="sha256 mismatch"), problems
    assert all(Path(p.file).name == SHARD for p in problems), problems


@pytest.mark.parametrize("sealed", [False, True])
def test_wrong_schema(out, sealed):
    table = pq.read_table(out / SHARD)
    i = table.schema.get_field_index("weight")
    table = table.set_column(
        i,
        pa.field("weight", pa.list_(pa.float64()), nullable=False),
        table.column("weight").cast(pa.list_(pa.float64())),
    )
    pq.write_table(table, out / SHARD)
    if sealed:
        reseal(out, SHARD)
    problems = validate_output(out)
    assert about(problems, SHARD, text="wrong schema (column 'weight' has type list<element: double>")
    assert bool(about(problems, SHARD, text="sha256")) != sealed


@pytest.mark.parametrize("sealed", [False, True])
def test_mismatched_list_lengths(out, sealed):
    edit_column(out, SHARD, "weight", lambda rows: rows[3].pop())
    if sealed:
        reseal(out, SHARD)
    problems = validate_output(out)
    found = about(problems, SHARD, row=3, text="weight has a different number of values than n_tokens says")
    assert found and found[0].sample_id == 8 + 3
    assert "row 3 (sample 11)" in str(found[0]) and "Fix:" in str(found[0])


def test_mismatched_segment_list_lengths(out):
    edit_column(out, SHARD, "segment_doc_offsets", lambda rows: rows[2].append(0))
    reseal(out, SHARD)
    assert about(
        validate_output(out),
        SHARD,
        row=2,
        text="segment_doc_offsets has a different number of values than segment_starts",
    )


@pytest.mark.parametrize("sealed", [False, True])
@pytest.mark.parametrize("value", [1.5, 0.5, float("nan"), float("inf"), float("-inf")])
def test_out_of_range_or_non_finite_weight(out, sealed, value):
    def edit(rows: list) -> None:
        rows[5][7] = value

    edit_column(out, SHARD, "weight", edit)
    if sealed:
        reseal(out, SHARD)
    problems = validate_output(out)
    assert about(problems, SHARD, row=5, text="weight outside [0.8, 1.2] or not finite (NaN, inf)"), problems
    if sealed:
        assert {p.row for p in problems} == {5}, problems


@pytest.mark.parametrize("column", ["logp_rl", "logp_base"])
@pytest.mark.parametrize("value", [float("-inf"), float("inf")])
def test_infinite_log_prob(out, column, value):
    """-inf passes a range check (it is not positive) but makes the online weight and loss NaN."""

    def edit(rows: list) -> None:
        rows[3][9] = value  # position 9 of row 3 is scored (not a segment start) in this fixture

    table = pq.read_table(out / SHARD)
    assert 9 not in table.column("segment_starts")[3].as_py()
    edit_column(out, SHARD, column, edit)
    reseal(out, SHARD)
    problems = validate_output(out)
    assert about(problems, SHARD, row=3, text=f"{column} is infinite (-inf or +inf)"), problems
    assert not about(problems, SHARD, text="positive log-prob"), problems  # +inf is named once, as infinite


def test_nan_log_prob_inside_a_segment(out):
    def edit(rows: list) -> None:
        rows[4][10] = float("nan")

    edit_column(out, SHARD, "logp_rl", edit)
    reseal(out, SHARD)
    assert about(validate_output(out), SHARD, row=4, text="logp_rl is NaN where it should not be")


def test_weight_that_does_not_follow_from_the_log_probs(out):
    def edit(rows: list) -> None:
        rows[6][12] = float(np.clip(rows[6][12] + 0.05, 0.8, 1.2)) if rows[6][12] < 1.1 else rows[6][12] - 0.05

    edit_column(out, SHARD, "weight", edit)
    reseal(out, SHARD)
    assert about(validate_output(out), SHARD, row=6, text="does not follow from the log-probs")


def test_token_changed_with_a_consistent_file_hash(out):
    def edit(rows: list) -> None:
        rows[1][20] += 1

    edit_column(out, SHARD, "token_ids", edit)
    reseal(out, SHARD)
    assert about(validate_output(out), SHARD, text="token checksum")


def test_a_column_changed_with_a_consistent_file_hash_is_named(out):
    """A document id has no other check: its column's checksum names it."""

    def edit(rows: list) -> None:
        rows[1][0] = rows[1][0] + "-x"

    edit_column(out, SHARD, "segment_doc_ids", edit)
    reseal(out, SHARD, columns=False)
    problems = validate_output(out)
    assert about(problems, SHARD, text="column(s) segment_doc_ids differ from the checksums"), problems
    assert not about(problems, SHARD, text="sha256"), problems


def test_a_gap_in_a_document_is_caught_across_rows(out):
    """A continuation segment that does not start where its document stopped (a lost or repeated piece)."""
    table = pq.read_table(out / SHARD)
    offsets = table.column("segment_doc_offsets").to_pylist()
    row = next(r for r, offs in enumerate(offsets) if offs[0] > 0)

    def edit(rows: list) -> None:
        rows[row][0] += 3

    edit_column(out, SHARD, "segment_doc_offsets", edit)
    reseal(out, SHARD)
    assert about(validate_output(out), SHARD, row=row, text="does not continue its document")


def test_missing_and_unlisted_shards(out):
    (out / SHARD).rename(out / "shard-99999.parquet")
    problems = validate_output(out)
    assert about(problems, SHARD, text="missing")
    assert about(problems, "shard-99999.parquet", text="not listed in the manifest")


def test_the_cli_exits_non_zero_and_names_file_and_row(out, capsys):
    def edit(rows: list) -> None:
        rows[2][3] = 2.0

    edit_column(out, SHARD, "weight", edit)
    assert main(["validate", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out / SHARD} row 2 (sample 10): weight outside" in err
    assert "problem(s)" in err


def test_problem_text_names_file_row_and_fix():
    p = Problem("/o/shard-00002.parquet", 4, "weight outside [0.8, 1.2] or NaN.", "re-run it", sample_id=20)
    assert str(p) == "/o/shard-00002.parquet row 4 (sample 20): weight outside [0.8, 1.2] or NaN. Fix: re-run it"
    assert str(Problem("/o/x.parquet", None, "missing", "restore it")) == "/o/x.parquet: missing. Fix: restore it"
