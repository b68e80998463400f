"""remit-train writes only into folders it may write: not an annotation output, not the --init-hf model,
not a folder of the user's; one job per run folder (real processes hold and contend for the lease)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remit.train.folders import (
    EXPORT_MARKER,
    LEASE_FILE,
    RUN_MARKER,
    FolderError,
    check_export_folder,
    check_run_folder,
    claim_export_folder,
    claim_run_folder,
    hold_run_folder,
)
from tests.train import runs

HOLD = """
import sys, time
from pathlib import Path
from remit.train.folders import hold_run_folder
lease = hold_run_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lease.__exit__(None, None, None)
"""


def _annotation_output(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / ".remit-output").write_text("{}")
    (root / "manifest.json").write_text(json.dumps({"format": "remit-annotations"}))
    return root


def test_a_run_folder_inside_an_annotation_output_or_the_init_model_is_refused(tmp_path):
    out = _annotation_output(tmp_path / "scored")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for save, init in ((out, None), (out / "run", None), (model, model), (model / "run", model)):
        with pytest.raises(
            FolderError, match=r"^.*: --save (lies inside the annotation output|is \(or lies inside\) the --init-hf)"
        ):
            check_run_folder(save, init)


def test_a_foreign_folder_is_refused_and_remit_s_own_are_accepted(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("the user's")
    with pytest.raises(FolderError, match=r"did not create \(it holds notes.txt\)"):
        check_run_folder(foreign, None)
    check_run_folder(tmp_path / "new", None)  # absent
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty", None)
    legacy = tmp_path / "legacy"  # an earlier version's run: a tracker, no marker
    legacy.mkdir()
    (legacy / "latest_checkpointed_iteration.txt").write_text("3\n")
    check_run_folder(legacy, None)
    claim_run_folder(foreign)  # once marked (by remit), it is remit's
    assert (foreign / RUN_MARKER).exists()
    check_run_folder(foreign, None)


def test_export_refuses_the_user_s_files_the_run_folder_and_the_init_model(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    with pytest.raises(FolderError, match=r"holds files remit did not write \(config.json\)"):
        check_export_folder(user, None, None)
    with pytest.raises(FolderError, match="--init-hf"):
        check_export_folder(user, user, None)
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FolderError, match="is \\(or holds\\) the run folder"):
        check_export_folder(run, None, run)
    with pytest.raises(FolderError, match="annotation output"):
        check_export_folder(_annotation_output(tmp_path / "scored") / "hf", None, run)
    check_export_folder(run / "hf", None, run)  # a new folder inside the run folder is fine
    legacy = tmp_path / "old-export"  # what an earlier export wrote, nothing else
    legacy.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (legacy / name).write_text("x")
    check_export_folder(legacy, None, None)
    claim_export_folder(tmp_path / "fresh")
    (tmp_path / "fresh" / "README.md").write_text("written by the export's user later")
    assert (tmp_path / "fresh" / EXPORT_MARKER).exists()
    check_export_folder(tmp_path / "fresh", None, None)


def test_a_second_process_is_refused_while_the_first_holds_the_run_folder(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), "30"], env=runs.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-c", HOLD, str(run), "0"], env=runs.env(), capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert f"another training job holds this run folder (pid {first.pid} on" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_the_lease_of_a_job_that_is_gone_is_taken_over_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease = hold_run_folder(run)  # take it once to write a well-formed lease, then make it the dead job's
    data = json.loads((run / LEASE_FILE).read_text())
    lease.__exit__(None, None, None)
    (run / LEASE_FILE).write_text(
        json.dumps({**data, "pid": dead.pid, "token": "other", "heartbeat": time.time() - 3600})
    )
    lease = hold_run_folder(run)
    try:
        err = capsys.readouterr().err
        assert f"{run} (pid {dead.pid} on" in err and "taking over the lease of a training job that is gone" in err
        assert json.loads((run / LEASE_FILE).read_text())["pid"] == os.getpid()
    finally:
        lease.__exit__(None, None, None)
    assert not (run / LEASE_FILE).exists()  # released when the run ends


@pytest.mark.megatron
def test_remit_train_refuses_a_run_folder_another_job_holds_and_a_foreign_export(data, random_llama, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), "120"], env=runs.env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = runs.remit_train("--data", data, "--init-hf", random_llama, "--save", run, "--train-iters", "1")
        assert proc.returncode == 2 and f"(pid {holder.pid} on" in proc.stderr, proc.stderr[-2000:]
        assert not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    proc = runs.remit_train(
        "--data", data, "--init-hf", random_llama, "--save", tmp_path / "run2", "--train-iters", "1",
        "--export-hf", random_llama,
    )  # fmt: skip
    assert proc.returncode == 2 and "--init-hf" in proc.stderr and not (tmp_path / "run2" / "metrics.jsonl").exists()
