"""The views script stays one script whatever the output folder is called.

The folder's path goes into a comment line and a string literal of the script `python -m
remit.shards.views` prints. A path holding newlines, quotes, ``--``, ``*/``, control characters or a
duckdb shell command must neither run anything (no file written) nor break the views.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

duckdb = pytest.importorskip("duckdb")

from remit.shards import ShardError  # noqa: E402
from remit.shards.synthetic import make_output  # noqa: E402
from remit.shards.views import GLOB_CHARACTERS, script, sql_comment, sql_literal  # noqa: E402

_VENV_SHELL = Path(sys.executable).parent / "duckdb"
SHELL = shutil.which("duckdb") or (str(_VENV_SHELL) if _VENV_SHELL.exists() else None)

PAYLOADS = [
    "x\nCOPY (SELECT 42) TO 'pwned.csv';\n--",
    "x\n.shell touch pwned-shell\n",
    "x\r.output pwned-output\r",
    "x'; COPY (SELECT 1) TO 'pwned.csv'; --",
    "x */ COPY (SELECT 1) TO 'pwned.csv'; /* ",
    "x /* \n COPY (SELECT 1) TO 'pwned.csv'; -- ",
    "x\u2028COPY (SELECT 1) TO 'pwned.csv';\x85\x1b[2J",
    "é ' \" -- \t\v\f end",
]
HOSTILE_CHARS = "\n\r\t\v\f\x1b\x85\u2028'\"-*;.\\ aé"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_output(tmp_path_factory.mktemp("esc") / "clean", n_docs=10, seq_len=32, rows_per_shard=8, seed=2)


def run_script(text: str, cwd: Path) -> None:
    """The script in Python's DuckDB and (where installed) the duckdb shell, both run from `cwd`."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        con = duckdb.connect()
        con.execute(text)
        assert con.execute("SELECT rows FROM remit_summary").fetchone()[0] > 0
        con.close()
    finally:
        os.chdir(here)
    if SHELL is not None:
        init = cwd.parent / "remit.sql"
        init.write_text(text)
        done = subprocess.run(
            [SHELL, "-csv", "-init", str(init), "-c", "SELECT rows FROM remit_summary"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == "rows"


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=HOSTILE_CHARS, min_size=1, max_size=30))
@example(name=PAYLOADS[0])
@example(name=PAYLOADS[1])
@example(name=PAYLOADS[2])
@example(name=PAYLOADS[3])
@example(name=PAYLOADS[4])
@example(name=PAYLOADS[5])
@example(name=PAYLOADS[6])
@example(name=PAYLOADS[7])
def test_hostile_folder_names_run_nothing(clean, name):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp) / "cwd"
        cwd.mkdir()
        root = Path(tmp) / f"out {name}"
        shutil.copytree(clean, root)
        if any(ch in name for ch in GLOB_CHARACTERS):  # DuckDB's read_parquet would expand them: refused
            with pytest.raises(ShardError, match="glob character"):
                script(root)
            return
        text = script(root)
        first, rest = text.split("\n", 1)
        assert first.startswith("-- remit views over ")
        assert rest.startswith("SET VARIABLE remit_output = ")
        run_script(text, cwd)
        assert sorted(os.listdir(cwd)) == []
        assert sorted(p.name for p in Path(tmp).iterdir()) == sorted(
            ["cwd", root.name, "remit.sql"][: 3 if SHELL else 2]
        )


def test_the_known_payloads_run_nothing(clean):
    """The payloads alone, for the fast suite (the property test above is marked slow)."""
    for name in PAYLOADS:
        if any(ch in name for ch in GLOB_CHARACTERS):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp) / "cwd"
            cwd.mkdir()
            root = Path(shutil.copytree(clean, Path(tmp) / f"out {name}"))
            run_script(script(root), cwd)
            assert os.listdir(cwd) == []


def test_glob_characters_are_refused(clean, tmp_path):
    root = Path(shutil.copytree(clean, tmp_path / "out */ x"))
    with pytest.raises(ShardError, match="glob character"):
        script(root)


_CON = duckdb.connect()


@given(value=st.text().filter(lambda s: "\0" not in s))
@settings(max_examples=150, deadline=None)
def test_sql_literal_round_trips_in_one_line(value):
    literal = sql_literal(value)
    assert "\n" not in literal and "\r" not in literal
    con = _CON
    try:
        got = con.execute(f"SELECT {literal}").fetchone()[0]
    except duckdb.Error:  # an unpaired surrogate: no UTF-8 string holds it
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        return
    assert got == value


@given(value=st.text())
def test_sql_comment_is_one_printable_line(value):
    shown = sql_comment(value)
    assert all(ch.isprintable() or ch == " " for ch in shown)


def test_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\0b")
