"""`stats`, `show` and `verify` refuse an output one of whose shards was altered after it was written
(one weight, one log-prob, one segment start, in a shard rewritten as a valid Parquet file), in one line
naming the file, the column and the row, before reporting any figure or loading any model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from remit.annotate.cli import main
from tests.shards.test_integrity import ALTERATIONS, FILE

pytest.importorskip("duckdb")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    from remit.shards.synthetic import make_output

    return make_output(tmp_path_factory.mktemp("altered") / "clean", n_docs=40, seq_len=48, rows_per_shard=6, seed=9)


def _commands(out: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "stats": ["stats", str(out)],
        "show": ["show", str(out), "-o", str(tmp_path / "page.html"), "--plot-tokens", "100"],
        # The models recorded by the synthetic output do not exist: the data check must come first.
        "verify": ["verify", str(out), "--rows", "1"],
    }


def test_a_clean_output_is_read(clean, tmp_path, capsys):
    assert main(["stats", str(clean)]) == 0
    assert main(_commands(clean, tmp_path)["show"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("alter", ALTERATIONS)
def test_each_reader_refuses_an_altered_shard(clean, tmp_path, capsys, alter):
    out = Path(shutil.copytree(clean, tmp_path / "out"))
    row, column = alter(out)
    capsys.readouterr()
    for name, argv in _commands(out, tmp_path).items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (name, captured.err)
        msg = lines[0]
        assert f": {out / FILE}: column '{column}' does not match" in msg, (name, msg)
        assert f"row {row} (sample " in msg and "Fix: " in msg, (name, msg)
        assert "Traceback" not in captured.err and not captured.out.strip(), name
    assert not (tmp_path / "page.html").exists()
