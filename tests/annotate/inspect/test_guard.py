"""The DuckDB guard of the inspection commands: exit statuses and one-line messages, no traceback."""

from __future__ import annotations

import sys

import pytest

duckdb = pytest.importorskip("duckdb")

from remit.annotate.inspect.guard import run_with_duckdb  # noqa: E402
from remit.shards.manifest import ShardError  # noqa: E402


def raising(error: BaseException):
    def body() -> int:
        raise error

    return body


@pytest.mark.parametrize(
    "error, status, message",
    [
        (ShardError("out/manifest.json: missing"), 2, "remit-annotate stats: error: out/manifest.json: missing"),
        (ValueError("top_k must be at least 1; got 0"), 2, "remit-annotate stats: error: top_k must be at least 1"),
        (
            duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate\nmore lines"),
            3,
            "remit-annotate stats: DuckDB ran out of memory (Out of Memory Error: failed to allocate); raise "
            "--memory-limit or lower --threads",
        ),
        (ImportError("No module named 'matplotlib'"), 2, "install the inspection extras: pip install 'remit[inspect]'"),
    ],
)
def test_failures_become_one_line_and_a_status(error, status, message, capsys):
    assert run_with_duckdb("stats", raising(error)) == status
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_body_runs_and_its_status_is_returned(capsys):
    assert run_with_duckdb("show", lambda: 0) == 0
    assert run_with_duckdb("show", lambda: 1) == 1
    assert capsys.readouterr().err == ""


def test_without_duckdb_the_command_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # makes `import duckdb` fail
    assert run_with_duckdb("show", lambda: 0) == 2
    assert "remit-annotate show: needs DuckDB: pip install 'remit[inspect]'" in capsys.readouterr().err
