"""The shipped SQL files run in the plain `duckdb` shell and give the numbers the Python views give."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

duckdb = pytest.importorskip("duckdb")

from remit.shards.views import SQL_DIR, connect, sql_files, sql_literal  # noqa: E402

_VENV_SHELL = Path(sys.executable).parent / "duckdb"
SHELL = shutil.which("duckdb") or (str(_VENV_SHELL) if _VENV_SHELL.exists() else None)
pytestmark = pytest.mark.skipif(
    SHELL is None, reason="the duckdb command-line shell is not installed (pip install duckdb-cli)"
)


def shell_csv(*args: str, stdin: str | None = None) -> list[dict]:
    out = subprocess.run(
        [SHELL, "-csv", *args], input=stdin, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_files_piped_into_the_shell(small_output: Path) -> None:
    script = f"SET VARIABLE remit_output = {sql_literal(str(small_output))};\n"
    script += "".join(f.read_text() for f in sql_files())
    script += "SELECT rows, scored_tokens, mean_weight, tokens_at_low FROM remit_summary;\n"
    got = shell_csv(stdin=script)[0]
    want = (
        connect(small_output)
        .execute("SELECT rows, scored_tokens, mean_weight, tokens_at_low FROM remit_summary")
        .fetchone()
    )
    assert (int(got["rows"]), int(got["scored_tokens"]), int(got["tokens_at_low"])) == (want[0], want[1], want[3])
    assert float(got["mean_weight"]) == pytest.approx(want[2], rel=1e-12)


def test_printed_script_as_init_file(tmp_path: Path, small_output: Path) -> None:
    init = tmp_path / "remit.sql"
    init.write_text(
        subprocess.run(
            [sys.executable, "-m", "remit.shards.views", str(small_output)], capture_output=True, text=True, check=True
        ).stdout
    )
    rows = shell_csv("-init", str(init), "-c", "SELECT bin, tokens FROM remit_weight_histogram")
    want = connect(small_output).execute("SELECT bin, tokens FROM remit_weight_histogram").fetchall()
    assert [(int(r["bin"]), int(r["tokens"])) for r in rows] == want


def test_read_commands_from_the_sql_folder(small_output: Path) -> None:
    sql_dir = subprocess.run(
        [sys.executable, "-m", "remit.shards.views", "--sql-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(sql_dir) == SQL_DIR
    args = ["-c", f"SET VARIABLE remit_output = {sql_literal(str(small_output))}"]
    args += [a for f in sql_files() for a in ("-c", f".read {f}")]
    rows = shell_csv(*args, "-c", "SELECT token_id, count FROM remit_top_up_tokens")
    want = connect(small_output).execute("SELECT token_id, count FROM remit_top_up_tokens").fetchall()
    assert [(int(r["token_id"]), int(r["count"])) for r in rows] == want
