"""A manifest whose shard entry leads out of the output folder is refused by every reader with the
repair command, and that command puts the output right: the unit is scored again under its own name,
and nothing outside the folder is read or written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from remit.annotate.cli import main
from remit.annotate.config import AnnotateConfig
from remit.annotate.job import run_job
from tests.annotate.runs import assert_same_output, fresh_copy, job


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_pair, corpus, planned, one_thread) -> Path:
    out = fresh_copy(planned, tmp_path_factory.mktemp("finished") / "out")
    assert run_job(AnnotateConfig(**job(model_pair, corpus, out)), 0, 1) == 0
    return out


def test_repair_fixes_an_entry_that_leads_out(finished, reference, tmp_path, capsys):
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(out / "shard-00001.parquet"), elsewhere / "shard-00001.parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][1]["file"] = "../elsewhere/shard-00001.parquet"
    (out / "manifest.json").write_text(json.dumps(manifest))
    outside = (elsewhere / "shard-00001.parquet").read_bytes()
    for argv in (["validate", str(out)], ["stats", str(out)]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "shard entry 1" in err and f"remit-annotate repair {out}" in err, err
    assert main(["repair", str(out), "--progress-every", "1000"]) == 0
    capsys.readouterr()
    assert_same_output(out, reference)
    assert main(["validate", str(out)]) == 0
    assert (elsewhere / "shard-00001.parquet").read_bytes() == outside
