"""finalize: a manifest only over complete, consistent units; otherwise every problem, and the command
that finishes the run."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from remit.annotate.cli import main
from remit.annotate.config import AnnotateConfig
from remit.annotate.finalize import IncompleteOutput, finalize
from remit.annotate.worker import run_worker
from tests.annotate.runs import assert_same_output, cli_flags, fresh_copy, job

pytestmark = pytest.mark.usefixtures("one_thread")


def test_finalize_lists_missing_units_with_the_command_that_finishes_them(
    planned, reference, model_pair, corpus, tmp_path
):
    out = fresh_copy(planned, tmp_path / "out")
    run_worker(AnnotateConfig(**job(model_pair, corpus, out)), 0, 2)
    n_units = len(json.loads((out / "_work" / "plan.json").read_text())["units"])
    with pytest.raises(IncompleteOutput) as err:
        finalize(out)
    message = str(err.value)
    odd = list(range(1, n_units, 2))
    assert f"{len(odd)} of {n_units} units are not finished: {', '.join(map(str, odd))}." in message
    command = next(line.strip() for line in message.splitlines() if line.strip().startswith("remit-annotate run"))
    assert not (out / "manifest.json").exists()
    # The printed command, as given, finishes the run (one worker, which finalizes).
    assert main(shlex.split(command)[1:]) == 0
    assert_same_output(out, reference)


def test_a_completion_record_whose_shard_is_gone_or_altered_is_scored_again(
    planned, reference, model_pair, corpus, tmp_path
):
    out = fresh_copy(planned, tmp_path / "out")
    cfg = AnnotateConfig(**job(model_pair, corpus, out, keep_work=True))
    run_worker(cfg)
    (out / "shard-00001.parquet").unlink()  # missing: `run` notices (one stat per unit) and re-scores
    shard = out / "shard-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # same size, other content: only the hash notices
    shard.write_bytes(bytes(data))
    stats, _ = run_worker(cfg)
    assert (stats.units_scored, stats.units_rescored) == (1, 1)
    with pytest.raises(IncompleteOutput, match=r"unit 2: its shard shard-00002.parquet differs .*sha256"):
        finalize(out)
    assert not (out / "_work" / "done" / "unit-00002.json").exists()
    stats, _ = run_worker(cfg)
    assert stats.units_scored == 1
    finalize(out)
    assert_same_output(out, reference)


@pytest.mark.parametrize("then", ["finalize", "rerun"])
def test_a_work_folder_left_by_a_finalize_killed_after_its_manifest_is_removed_next_time(
    planned, reference, model_pair, corpus, tmp_path, capsys, then
):
    out = fresh_copy(planned, tmp_path / "out")
    kwargs = job(model_pair, corpus, out)
    run_worker(AnnotateConfig(**kwargs), 0, 1)
    env = {**os.environ, "REMIT_FAILPOINT": "after-manifest"}
    code = f"from remit.annotate.finalize import finalize; finalize({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "manifest.json").exists() and (out / "_work").is_dir()
    capsys.readouterr()
    argv = ["finalize", str(out)] if then == "finalize" else cli_flags(model_pair, corpus, out)
    assert main(argv) == 0
    assert f"removing {out / '_work'}" in capsys.readouterr().err
    assert_same_output(out, reference)
