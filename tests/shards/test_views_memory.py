"""The views stay within DuckDB's memory limit on an output larger than that limit."""

from __future__ import annotations

from pathlib import Path

import pytest

duckdb = pytest.importorskip("duckdb")

from remit.shards.synthetic import make_output  # noqa: E402
from remit.shards.views import connect  # noqa: E402

LIMIT_MB = 64


@pytest.fixture(scope="module")
def big_output(tmp_path_factory) -> Path:
    # ~5.6M tokens: ~64 MB of Parquet on disk, ~90 MB of token lists once decoded.
    return make_output(
        tmp_path_factory.mktemp("inspect") / "big",
        n_docs=12000,
        seq_len=256,
        vocab=50000,
        doc_len=(20, 1000),
        rows_per_shard=4096,
        seed=2,
    )


@pytest.mark.slow
def test_views_run_within_a_memory_limit_smaller_than_the_output(big_output: Path, tmp_path: Path) -> None:
    on_disk = sum(p.stat().st_size for p in big_output.glob("*.parquet"))
    assert on_disk > LIMIT_MB * 10**6, "the output must be larger than the memory limit (DuckDB's MB = 10^6 B)"
    con = connect(big_output, memory_limit=f"{LIMIT_MB}MB", threads=1, temp_directory=tmp_path / "spill")

    # Control: a query that holds every token at once does not fit, so the limit really binds.
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute("SELECT list(discrepancy) FROM remit_tokens").fetchall()

    # The one streaming pass over the tokens (what summary, histogram, position and token views read) fits;
    # it is cached afterwards, as `stats` does, so the test runs it once.
    con.execute("CREATE TEMP TABLE remit_token_stats AS FROM remit_token_stats")
    tokens = con.execute("SELECT scored_tokens FROM remit_summary").fetchone()[0]
    assert tokens > 5_000_000
    assert sum(r[3] for r in con.execute("FROM remit_weight_histogram").fetchall()) == tokens
    assert sum(r[3] for r in con.execute("FROM remit_weight_by_position").fetchall()) == tokens
    assert len(con.execute("FROM remit_top_up_tokens").fetchall()) == 20
    assert con.execute("SELECT count(*) FROM remit_by_document").fetchone()[0] == 12000
    assert len(con.execute("FROM remit_by_document ORDER BY mean_weight DESC LIMIT 5").fetchall()) == 5
    assert len(con.execute("FROM remit_by_source").fetchall()) == 3
