"""Shard writer and reader: round trip, DuckDB readability, atomicity, and refusal of bad shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remit.shards import SCHEMA, ShardError, open_output, read_shard
from remit.shards.checksum import token_checksum
from remit.shards.synthetic import make_output


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return make_output(tmp_path_factory.mktemp("out") / "o", n_docs=30, seq_len=32, rows_per_shard=5)


def test_round_trip_and_summaries(output):
    out = open_output(output)
    tables = list(out.iter_tables())
    t = pa.concat_tables(tables)
    assert t.schema.equals(SCHEMA, check_metadata=False)
    assert t.column("sample_id").to_pylist() == list(range(out.manifest.total_rows))
    for row in t.to_pylist():
        n = row["n_tokens"]
        assert len(row["token_ids"]) == len(row["weight"]) == len(row["logp_base"]) == len(row["logp_rl"]) == n
        lb, lr, w = (np.array(row[c], np.float64) for c in ("logp_base", "logp_rl", "weight"))
        scored = ~np.isnan(lb)
        assert row["n_scored"] == scored.sum()
        assert np.isclose(row["mean_weight"], w[scored].mean() if scored.any() else 1.0, atol=1e-6)
        assert np.isclose(row["mean_discrepancy"], (lr - lb)[scored].mean() if scored.any() else 0.0, atol=1e-5)
        assert np.isclose(row["frac_at_high"], (w[scored] >= np.float32(1.2)).mean() if scored.any() else 0.0)
        bounds = [*row["segment_starts"], n]
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg = slice(a, b)
            assert row["segment_n_scored"][k] == scored[seg].sum()
            assert np.isclose(row["segment_sum_weight"][k], w[seg][scored[seg]].sum(), atol=1e-5)


def test_duckdb_reads_every_column(output):
    duckdb = pytest.importorskip("duckdb")
    glob = str(output / "*.parquet")
    cols = ", ".join(f"count({c})" for c in SCHEMA.names)
    counts = duckdb.sql(f"select {cols} from read_parquet('{glob}')").fetchall()[0]
    total = open_output(output).manifest.total_rows
    assert all(c == total for c in counts)
    s = duckdb.sql(f"select sum(len(weight)), sum(list_sum(weight)) from read_parquet('{glob}')").fetchall()[0]
    flat = np.concatenate(
        [
            pq.read_table(p, columns=["weight"]).column("weight").combine_chunks().flatten().to_numpy()
            for p in sorted(output.glob("*.parquet"))
        ]
    )
    assert s[0] == len(flat)
    assert np.isclose(s[1], flat.astype(np.float64).sum(), rtol=1e-6)


def test_no_temporary_files_left(output):
    assert not list(output.glob("*.tmp"))


def test_checksum_mismatch_is_refused(output):
    entry = open_output(output).manifest.shards[0]
    assert read_shard(output / entry["file"], expected=entry["column_checksums"]).num_rows == entry["rows"]
    wrong = {**entry["column_checksums"], "weight": "blake2b128:" + "0" * 32}
    with pytest.raises(ShardError, match="column.s. weight do not match"):
        read_shard(output / entry["file"], expected=wrong)


def test_truncated_shard_is_refused(output, tmp_path):
    src = output / "shard-00000.parquet"
    bad = tmp_path / "shard-00000.parquet"
    bad.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(ShardError, match="truncated or corrupt"):
        read_shard(bad)


def test_wrong_schema_is_refused(output, tmp_path):
    t = pq.read_table(output / "shard-00000.parquet").drop_columns(["weight"])
    pq.write_table(t, tmp_path / "x.parquet")
    with pytest.raises(ShardError, match="wrong schema"):
        read_shard(tmp_path / "x.parquet")


def test_list_length_mismatch_is_refused(output, tmp_path):
    t = pq.read_table(output / "shard-00000.parquet")
    w = t.column("weight").to_pylist()
    w[2] = w[2][:-1]
    t = t.set_column(
        t.schema.get_field_index("weight"), SCHEMA.field("weight"), pa.array(w, SCHEMA.field("weight").type)
    )
    pq.write_table(t, tmp_path / "y.parquet")
    with pytest.raises(ShardError, match="row 2"):
        read_shard(tmp_path / "y.parquet")


def test_token_checksum_depends_on_row_cut():
    toks = np.arange(10, dtype=np.int32)
    assert token_checksum(np.array([5, 5]), toks) != token_checksum(np.array([4, 6]), toks)


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(ShardError, match="no output of remit-annotate"):
        open_output(tmp_path)
    (tmp_path / "_work").mkdir()
    with pytest.raises(ShardError, match="remit-annotate repair"):
        open_output(tmp_path)


def test_segment_list_mismatch_is_refused(output, tmp_path):
    t = pq.read_table(output / "shard-00000.parquet")
    offs = t.column("segment_doc_offsets").to_pylist()
    offs[1] = offs[1] + [0]
    field = SCHEMA.field("segment_doc_offsets")
    t = t.set_column(t.schema.get_field_index("segment_doc_offsets"), field, pa.array(offs, field.type))
    pq.write_table(t, tmp_path / "z.parquet")
    with pytest.raises(ShardError, match="row 1 .*segment_doc_offsets.*segment_starts"):
        read_shard(tmp_path / "z.parquet")
