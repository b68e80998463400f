"""Checksums of every column: computed by the writer, recorded in the manifest, checked by every reader.

Each alteration is a shard rewritten as a valid Parquet file (the writer's own settings) with one value
changed and the manifest left alone, as an edit on disk would leave it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remit.shards import SCHEMA, ShardError, open_output
from remit.shards.checksum import column_checksum, column_checksums, file_sha256
from remit.shards.integrity import first_inconsistent_row
from remit.shards.synthetic import make_output
from remit.shards.validate import validate_output
from tests.altered import alter_shard

FILE = "shard-00001.parquet"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_output(tmp_path_factory.mktemp("integrity") / "clean", n_docs=40, seq_len=48, rows_per_shard=6, seed=9)


@pytest.fixture
def out(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "out"))


def _multi_segment_row(root: Path) -> int:
    """A row of FILE with at least two segments, the second one at least 3 tokens long."""
    table = pq.read_table(root / FILE)
    for r, (starts, n) in enumerate(
        zip(table.column("segment_starts").to_pylist(), table.column("n_tokens").to_pylist())
    ):
        bounds = [*starts, n]
        if len(starts) >= 2 and bounds[2] - bounds[1] >= 3:
            return r
    raise AssertionError("the fixture has no row with two segments")


def _scored_position(root: Path, row: int) -> int:
    """A position of `row` of FILE that is not a segment start (it has log-probs)."""
    starts = set(pq.read_table(root / FILE).column("segment_starts")[row].as_py())
    return next(i for i in range(1, 100) if i not in starts)


def alter_weight(root: Path) -> tuple[int, str]:
    row = _multi_segment_row(root)
    i = _scored_position(root, row)

    def edit(w: list) -> None:
        w[i] = 1.0 + 0.19 if w[i] < 1.0 else 1.0 - 0.19

    alter_shard(root, FILE, "weight", row, edit)
    return row, "weight"


def alter_logp(root: Path) -> tuple[int, str]:
    row = _multi_segment_row(root)
    i = _scored_position(root, row)

    def edit(lp: list) -> None:
        lp[i] = lp[i] - 3.0

    alter_shard(root, FILE, "logp_base", row, edit)
    return row, "logp_base"


def alter_segment_start(root: Path) -> tuple[int, str]:
    row = _multi_segment_row(root)

    def edit(starts: list) -> None:
        starts[1] += 1

    alter_shard(root, FILE, "segment_starts", row, edit)
    return row, "segment_starts"


ALTERATIONS = [alter_weight, alter_logp, alter_segment_start]


# --- the checksum itself ----------------------------------------------------------------------------------


def test_every_column_has_a_recorded_checksum(clean):
    m = json.loads((clean / "manifest.json").read_text())
    assert m["format_version"] == 2
    for entry in m["shards"]:
        assert sorted(entry["column_checksums"]) == sorted(SCHEMA.names)
        assert entry["column_checksums"] == column_checksums(pq.read_table(clean / entry["file"]))


def test_the_checksum_depends_on_values_not_on_the_encoding(clean, tmp_path):
    """Re-encoding (another compression, tiny row groups, no dictionary) keeps every column's checksum;
    any split of the rows into chunks gives the same checksum."""
    table = pq.read_table(clean / FILE)
    pq.write_table(table, tmp_path / "re.parquet", compression="gzip", row_group_size=2, use_dictionary=False)
    again = pq.read_table(tmp_path / "re.parquet")
    assert again.column("weight").num_chunks > 1
    assert column_checksums(again) == column_checksums(table)
    for name in table.column_names:
        whole = table.column(name).combine_chunks()
        pieces = pa.chunked_array([whole.slice(0, 1), whole.slice(1, 3), whole.slice(4)], type=whole.type)
        assert column_checksum(pieces) == column_checksum(whole), name


def test_the_checksum_sees_values_lengths_nan_payloads_and_nulls():
    base = pa.array([[1.0, float("nan")], [2.0]], pa.list_(pa.float32()))
    same = column_checksum(base)
    # the same flat values cut into other rows
    assert column_checksum(pa.array([[1.0], [float("nan"), 2.0]], pa.list_(pa.float32()))) != same
    assert column_checksum(pa.array([[1.0, float("nan")], [2.5]], pa.list_(pa.float32()))) != same
    # a NaN with another payload is the same value
    other_nan = np.frombuffer(np.array([0x7FC00001], "<u4").tobytes(), np.float32)[0]
    assert np.isnan(other_nan)
    assert column_checksum(pa.array([[1.0, other_nan], [2.0]], pa.list_(pa.float32()))) == same
    # a null where the format has none
    assert column_checksum(pa.array([1, 2, None], pa.int32())) != column_checksum(pa.array([1, 2, 0], pa.int32()))
    strings = column_checksum(pa.array([["ab", "c"]], pa.list_(pa.string())))
    assert column_checksum(pa.array([["a", "bc"]], pa.list_(pa.string()))) != strings


# --- every reader of remit.shards refuses an altered shard ------------------------------------------------


@pytest.mark.parametrize("alter", ALTERATIONS)
def test_an_altered_column_is_refused_naming_file_column_and_row(out, alter):
    row, column = alter(out)
    output = open_output(out)
    index = [s["file"] for s in output.manifest.shards].index(FILE)
    sample = output.manifest.shards[index]["first_sample_id"] + row
    for read in (lambda: output.read(index), lambda: output.verify(), lambda: list(output.iter_tables())):
        with pytest.raises(ShardError) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{out / FILE}: column '{column}' does not match"), msg
        assert f"row {row} (sample {sample})" in msg, msg
        assert "Fix: " in msg
    # The other shards are untouched and still read.
    output.read(0)
    # `validate` names the column too (besides its own row checks and the file hash).
    problems = [str(p) for p in validate_output(out)]
    assert any(column in p and "differ from the checksums" in p for p in problems), problems


def test_a_reader_of_some_columns_checks_those(out):
    alter_weight(out)
    output = open_output(out)
    index = [s["file"] for s in output.manifest.shards].index(FILE)
    assert output.read(index, columns=["token_ids", "logp_rl"]).num_rows > 0  # weight not read: nothing to refuse
    with pytest.raises(ShardError, match="column 'weight'"):
        output.read(index, columns=["token_ids", "weight"])


def test_a_change_that_keeps_the_shard_consistent_is_named_by_column(out):
    """A token id has no summary that depends on it: the column is named, the row cannot be."""

    def edit(tokens: list) -> None:
        tokens[3] += 1

    alter_shard(out, FILE, "token_ids", 2, edit)
    with pytest.raises(ShardError) as e:
        open_output(out).verify()
    assert "column 'token_ids' does not match" in str(e.value) and "cannot be placed in a row" in str(e.value)


def test_a_clean_output_passes_and_its_rows_are_consistent(clean):
    output = open_output(clean)
    output.verify()
    m = output.manifest
    for table in output.iter_tables():
        assert first_inconsistent_row(table, eps=m.eps, center=m.center) is None


# --- outputs of format version 1 --------------------------------------------------------------------------


def _as_version_1(root: Path) -> None:
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = 1
    for entry in m["shards"]:
        del entry["column_checksums"]
    path.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def test_a_version_1_output_is_verified_by_its_file_hashes(out):
    """Format version 1 recorded the token checksum and each file's sha256: readers check the file hash,
    which covers every column (the message names the file, not the column)."""
    _as_version_1(out)
    open_output(out).verify()
    open_output(out).read(1)
    alter_weight(out)
    for read in (lambda: open_output(out).verify(), lambda: open_output(out).read(1, columns=["weight"])):
        with pytest.raises(ShardError) as e:
            read()
        assert str(e.value).startswith(f"{out / FILE}: its content differs from the sha256") and "version 1" in str(
            e.value
        )


def test_a_version_1_entry_without_file_hash_is_refused(out):
    _as_version_1(out)
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    del m["shards"][1]["file_sha256"]
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="neither column checksums nor a file hash"):
        open_output(out).read(1)
    assert file_sha256(out / FILE)  # the file itself is fine


@pytest.mark.parametrize("version", [3, 0, "2"])
def test_an_unknown_format_version_is_refused(out, version):
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = version
    path.write_text(json.dumps(m))
    with pytest.raises(ShardError, match="format.version"):
        open_output(out)
