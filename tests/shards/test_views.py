"""Each canned DuckDB view against the same statistic computed with numpy from the shards."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

duckdb = pytest.importorskip("duckdb")

from remit.shards.manifest import ShardError  # noqa: E402
from remit.shards.views import check_output, connect, script, sql_files, view_names  # noqa: E402
from tests.shards import views_reference as ref  # noqa: E402

KNOBS = {"remit_bins": 16, "remit_top_k": 7, "remit_min_count": 30}


def records(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@pytest.fixture(scope="module", params=["small_output", "segment_output"])
def case(request):
    root = request.getfixturevalue(request.param)
    eps = json.loads((root / "manifest.json").read_text())["weights"]["eps"]
    con = connect(root, threads=2, knobs=KNOBS)
    yield con, ref.load(root, eps)
    con.close()


def test_every_file_creates_views() -> None:
    names = view_names()
    assert next(f.name for f in sql_files()) == "00_base.sql"
    for want in (
        "remit_rows",
        "remit_tokens",
        "remit_token_stats",
        "remit_summary",
        "remit_weight_histogram",
        "remit_by_source",
        "remit_by_document",
        "remit_weight_by_position",
        "remit_token_weights",
        "remit_top_up_tokens",
        "remit_top_down_tokens",
        "remit_manifest",
    ):
        assert want in names


def test_tokens_view_holds_only_scored_tokens(case) -> None:
    con, f = case
    got = con.execute(
        "SELECT count(*), sum(weight::DOUBLE), sum(discrepancy), sum(pos_in_segment) FROM remit_tokens"
    ).fetchone()
    s = f.scored
    assert got[0] == int(s.sum())
    assert got[1] == pytest.approx(float(f.weight[s].astype(np.float64).sum()), rel=1e-12)
    assert got[2] == pytest.approx(float(f.discrepancy[s].sum()), rel=1e-9, abs=1e-9)
    assert got[3] == int(f.pos_in_segment[s].sum())
    # Unscored positions are exactly the segment starts: position 0 never appears.
    assert con.execute("SELECT min(pos_in_segment) FROM remit_tokens").fetchone()[0] == 1
    assert (f.pos_in_segment[~s] == 0).all()


def test_summary(case) -> None:
    con, f = case
    row = records(con, "FROM remit_summary")[0]
    s = f.scored
    w, d = f.weight[s].astype(np.float64), f.discrepancy[s]
    low, high = ref.at_bounds(f)
    assert row["eps"] == f.eps
    assert row["rows"] == len(f.row_lengths)
    assert row["segments"] == len(f.seg_doc_ids)
    assert row["documents"] == len(set(f.seg_doc_ids)) and row["duplicate_doc_ids"] == 0  # ids are unique here
    assert row["tokens"] == int(f.row_lengths.sum())
    assert row["scored_tokens"] == int(s.sum())
    assert row["mean_weight"] == pytest.approx(w.mean(), rel=1e-12)
    assert row["mean_discrepancy"] == pytest.approx(d.mean(), rel=1e-9, abs=1e-12)
    assert row["tokens_at_low"] == int((low & s).sum())
    assert row["tokens_at_high"] == int((high & s).sum())
    assert row["share_at_low"] == pytest.approx((low & s).sum() / s.sum())
    levels = row["quantile_levels"]
    assert levels[0] == 0.0 and levels[-1] == 1.0
    for q, wq, dq in zip(levels, row["weight_quantiles"], row["discrepancy_quantiles"]):
        # DuckDB rounds halves away from zero and numpy to even: allow one grid step.
        assert wq == pytest.approx(ref.grid_quantile(w, 1e-4, q), abs=1.01e-4), q
        assert dq == pytest.approx(ref.grid_quantile(d, 1e-3, q), abs=1.01e-3), q
    assert row["weight_quantiles"][0] == pytest.approx(w.min(), abs=5.1e-5)
    assert row["weight_quantiles"][-1] == pytest.approx(w.max(), abs=5.1e-5)


def test_weight_histogram(case) -> None:
    con, f = case
    rows = records(con, "FROM remit_weight_histogram")
    want = ref.histogram(f, KNOBS["remit_bins"])
    assert [r["bin"] for r in rows] == list(range(KNOBS["remit_bins"]))
    assert [r["tokens"] for r in rows] == want.tolist()
    assert rows[0]["lower"] == pytest.approx(1 - f.eps)
    assert rows[-1]["upper"] == pytest.approx(1 + f.eps)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)


def test_by_source_uses_row_summaries(case) -> None:
    con, f = case
    rows = {r["source"]: r for r in records(con, "FROM remit_by_source")}
    row_of_token = np.repeat(np.arange(len(f.row_lengths)), f.row_lengths)
    s = f.scored
    low, high = ref.at_bounds(f)
    sources = np.array(f.row_source)
    assert set(rows) == set(f.row_source)
    for src, got in rows.items():
        in_src = np.isin(row_of_token, np.flatnonzero(sources == src))
        m = in_src & s
        assert got["rows"] == int((sources == src).sum())
        assert got["tokens"] == int(in_src.sum())
        assert got["scored_tokens"] == int(m.sum())
        # mean_weight per row is stored as float32: the weighted mean of those is good to ~1e-7.
        assert got["mean_weight"] == pytest.approx(f.weight[m].astype(np.float64).mean(), abs=1e-6)
        assert got["mean_discrepancy"] == pytest.approx(f.discrepancy[m].mean(), abs=1e-6)
        assert got["share_at_low"] == pytest.approx((low & m).sum() / m.sum(), abs=1e-12)
        assert got["share_at_high"] == pytest.approx((high & m).sum() / m.sum(), abs=1e-12)


def test_by_document(case) -> None:
    con, f = case
    rows = {r["doc_id"]: r for r in records(con, "FROM remit_by_document")}
    want = ref.per_document(f)
    assert set(rows) == set(want)
    for doc, w in want.items():
        got = rows[doc]
        assert (got["segments"], got["tokens"], got["scored_tokens"]) == (w["segments"], w["tokens"], w["scored"])
        if w["scored"]:
            assert got["mean_weight"] == pytest.approx(w["mean_weight"], rel=1e-12)
            assert got["mean_discrepancy"] == pytest.approx(w["mean_discrepancy"], rel=1e-9, abs=1e-12)
        else:
            assert got["mean_weight"] is None


def test_weight_by_position(case) -> None:
    con, f = case
    rows = records(con, "FROM remit_weight_by_position")
    s = f.scored
    pos, w, d = f.pos_in_segment[s], f.weight[s].astype(np.float64), f.discrepancy[s]
    low, high = ref.at_bounds(f)
    bucket = np.floor(np.log2(pos)).astype(np.int64)
    assert [r["bucket"] for r in rows] == sorted(set(bucket.tolist()))
    for r in rows:
        m = bucket == r["bucket"]
        assert r["pos_from"] == 2 ** r["bucket"] and r["pos_to"] == 2 ** (r["bucket"] + 1) - 1
        assert pos[m].min() >= r["pos_from"] and pos[m].max() <= r["pos_to"]
        assert r["tokens"] == int(m.sum())
        assert r["mean_weight"] == pytest.approx(w[m].mean(), rel=1e-12)
        assert r["mean_discrepancy"] == pytest.approx(d[m].mean(), rel=1e-9, abs=1e-12)
        assert r["share_at_low"] == pytest.approx(low[s][m].mean())
        assert r["share_at_high"] == pytest.approx(high[s][m].mean())


def test_token_weights_and_top_lists(case) -> None:
    con, f = case
    want = ref.per_token(f)
    rows = {r["token_id"]: r for r in records(con, "FROM remit_token_weights")}
    assert set(rows) == set(want)
    for tid, (n, mw, md) in want.items():
        assert rows[tid]["count"] == n
        assert rows[tid]["mean_weight"] == pytest.approx(mw, rel=1e-12)
        assert rows[tid]["mean_discrepancy"] == pytest.approx(md, rel=1e-9, abs=1e-12)
    eligible = [(tid, v) for tid, v in want.items() if v[0] >= KNOBS["remit_min_count"]]
    assert len(eligible) > KNOBS["remit_top_k"], "the fixture must have enough frequent token ids"
    up = sorted(eligible, key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[: KNOBS["remit_top_k"]]
    down = sorted(eligible, key=lambda kv: (kv[1][1], -kv[1][0], kv[0]))[: KNOBS["remit_top_k"]]
    got_up = records(con, "FROM remit_top_up_tokens")
    got_down = records(con, "FROM remit_top_down_tokens")
    # Compare ids where the mean weights are clearly apart (float sums may order near-ties either way).
    assert [r["mean_weight"] for r in got_up] == pytest.approx([v[1] for _, v in up], rel=1e-12)
    assert [r["mean_weight"] for r in got_down] == pytest.approx([v[1] for _, v in down], rel=1e-12)
    assert got_up[0]["token_id"] == up[0][0] and got_down[0]["token_id"] == down[0][0]


def test_cached_token_stats_give_the_same_answers(small_output: Path) -> None:
    con = connect(small_output, knobs=KNOBS)
    before = {v: con.execute(f"FROM {v}").fetchall() for v in ("remit_summary", "remit_weight_histogram")}
    con.execute("CREATE OR REPLACE TEMP TABLE remit_token_stats AS FROM remit_token_stats")
    for v, rows in before.items():
        assert con.execute(f"FROM {v}").fetchall() == rows


def test_variable_switches_outputs(small_output: Path, segment_output: Path) -> None:
    con = connect(small_output)
    n_small = con.execute("SELECT rows FROM remit_summary").fetchone()[0]
    con.execute("SET VARIABLE remit_output = ?", [str(segment_output)])
    assert con.execute("SELECT eps, rows FROM remit_summary").fetchone() != (0.2, n_small)
    assert con.execute("SELECT eps FROM remit_manifest").fetchone()[0] == 0.1


def test_script_runs_in_a_fresh_connection(small_output: Path) -> None:
    con = duckdb.connect()
    for statement in [script(small_output)]:
        con.execute(statement)
    assert con.execute("SELECT rows FROM remit_summary").fetchone()[0] > 0


def test_clear_errors(tmp_path: Path, small_output: Path) -> None:
    with pytest.raises(ShardError, match="no such output folder"):
        check_output(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="manifest.json: missing, and .* is no output of remit-annotate"):
        connect(tmp_path / "empty")
    (tmp_path / "empty" / ".remit-output").write_text("{}")
    with pytest.raises(ShardError, match="manifest.json: missing.*remit-annotate repair"):
        connect(tmp_path / "empty")
    copy = tmp_path / "copy"
    shutil.copytree(small_output, copy)
    shutil.copy(copy / "shard-00000.parquet", copy / "stray.parquet")
    with pytest.raises(ShardError, match="not in manifest.json.*stray.parquet"):
        check_output(copy)
    (copy / "stray.parquet").unlink()
    (copy / "shard-00001.parquet").unlink()
    with pytest.raises(ShardError, match="missing.*shard-00001"):
        check_output(copy)


def test_work_folder_and_tmp_files_are_ignored(tmp_path: Path, small_output: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(small_output, copy)
    (copy / "_work").mkdir()
    shutil.copy(copy / "shard-00000.parquet", copy / "_work" / "unit.parquet")
    shutil.copy(copy / "shard-00000.parquet", copy / "shard-00009.parquet.tmp")
    con = connect(copy)
    assert (
        con.execute("SELECT count(*) FROM remit_rows").fetchone()[0]
        == json.loads((copy / "manifest.json").read_text())["totals"]["rows"]
    )
    assert not math.isnan(con.execute("SELECT mean_weight FROM remit_summary").fetchone()[0])
