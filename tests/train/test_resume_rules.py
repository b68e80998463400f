"""Honest resumes and clean failures of remit-train, run as it is launched (subprocesses): the schedule
of a resume, one-step runs, missing --load, batch flags, checkpoint hashes, seq-len against the model,
damaged files, full and read-only disks, a checksum failure on one data-parallel rank, and no process
left behind by a kill during a save."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.train import runs
from tests.train.runs import ok as _ok
from tests.train.test_trainer import _lr

pytestmark = pytest.mark.megatron

FAULT_RUN = Path(__file__).with_name("fault_run.py")


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a failed remit-train (per process), with no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("remit-train")]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return lines[0]


def _train(data: Path, save: Path, *flags, train_iters: int = 8, init_hf: Path | None = None, nproc: int = 1):
    start = ["--init-hf", init_hf] if init_hf is not None else []
    return runs.remit_train(
        "--data", data, "--save", save, *start, "--train-iters", str(train_iters), *runs.BASE_FLAGS, *flags,
        nproc=nproc,
    )  # fmt: skip


def _metrics(save: Path) -> list[dict]:
    return runs.metrics(save)


# --- the schedule of a resume ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        ([], "--train-iters 8 sets the decay length (no --lr-decay-iters), and the checkpoint decays over 6"),
        (["--lr-decay-iters", "6", "--lr", "0.002"], "--lr 0.002 differs from the checkpoint's 0.001"),
        (["--lr-decay-iters", "6", "--min-lr", "1e-05"], "--min-lr 1e-05 differs from the checkpoint's 0.0"),
        (["--lr-decay-iters", "6", "--lr-warmup-iters", "1"], "--lr-warmup-iters 1 differs from the checkpoint's 2"),
        (["--lr-decay-iters", "6", "--lr-decay-style", "linear"], "--lr-decay-style linear differs"),
    ],
)
def test_a_changed_schedule_is_refused_naming_the_flag(baseline, data, tmp_path, flags, needle):
    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    before = (run / "metrics.jsonl").read_text()
    # BASE_FLAGS pass --lr-warmup-iters 2; a later flag wins in argparse
    msg = _error_line(_train(data, run, *flags))
    assert needle in msg and "--override-schedule" in msg and str(run / "iter_0000006") in msg, msg
    assert (run / "metrics.jsonl").read_text() == before


def test_override_schedule_continues_under_the_new_schedule(baseline, data, tmp_path):
    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    _ok(_train(data, run, "--override-schedule"))
    rows = _metrics(run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    old = _metrics(baseline / "run")
    assert [r["lr"] for r in rows[:6]] == [r["lr"] for r in old]  # the checkpoint's part is kept
    new = [r["lr"] for r in rows[6:]]
    assert new == pytest.approx([_lr(k, peak=1e-3, warmup=2, decay=8) for k in (7, 8)], rel=1e-12)
    assert all(lr > 0 for lr in new)
    # the checkpoint records the new schedule: resuming it with the same flags is accepted
    _ok(_train(data, run, "--lr-decay-iters", "8", train_iters=9))


def test_a_longer_run_with_the_same_decay_trains_at_min_lr(baseline, data, tmp_path):
    """Same schedule (explicit --lr-decay-iters of the checkpoint), more steps: accepted, and the steps
    after the decay train at --min-lr, by design."""
    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    _ok(_train(data, run, "--lr-decay-iters", "6", "--min-lr", "0"))
    assert [r["lr"] for r in _metrics(run)[6:]] == [0.0, 0.0]


def test_one_step_makes_an_update(data, random_llama, tmp_path):
    """--train-iters 1: its only step is the last of its decay, and still trains above --min-lr."""
    from remit.train.convert import read_hf_weights

    start = read_hf_weights(random_llama)
    for name, flags, lr in (
        ("cosine", [], 0.5e-3),
        ("linear", ["--lr-decay-style", "linear", "--min-lr", "1e-4"], 1e-4 + 0.5 * 0.9e-3),
    ):
        save, hf = tmp_path / name, tmp_path / f"{name}-hf"
        _ok(
            _train(data, save, "--lr-warmup-iters", "0", "--export-hf", hf, *flags, train_iters=1, init_hf=random_llama)
        )
        (row,) = _metrics(save)
        assert row["lr"] == pytest.approx(lr, rel=1e-12), name
        got = read_hf_weights(hf)
        moved = [n for n in start if not bool((got[n] == start[n]).all())]
        assert len(moved) == len(start), (name, sorted(set(start) - set(moved)))


# --- flags checked before any work ------------------------------------------------------------------


def test_load_of_a_missing_folder_is_an_error(data, random_llama, tmp_path):
    for load, needle in (
        (tmp_path / "nope", "does not exist"),
        (tmp_path, "holds no checkpoint"),
    ):
        msg = _error_line(_train(data, tmp_path / "run", "--load", load, init_hf=random_llama))
        assert msg.startswith("remit-train: error: load: ") and needle in msg and str(load) in msg, msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "gbs, needle",
    [
        ("-4", "global_batch_size: must be >= 1, got -4"),
        ("0", "global_batch_size: must be >= 1, got 0"),
        ("5", "global_batch_size: 5 is not a multiple of micro_batch_size 2"),
        (
            "1000",
            "global_batch_size: 1000 sequences per step, but the data holds only 45; pass --global-batch-size of at most 44",
        ),
    ],
)
def test_batch_flags_are_checked_before_any_work(data, random_llama, tmp_path, gbs, needle):
    proc = runs.run(
        [*runs.launcher(1), "-m", "remit.train", "--data", str(data), "--save", str(tmp_path / "run"),
         "--init-hf", str(random_llama), "--train-iters", "2", "--micro-batch-size", "2",
         "--global-batch-size", gbs],
        timeout=120,
    )  # fmt: skip
    assert needle in _error_line(proc)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_seq_len_beyond_the_models_positions_is_refused_before_the_data_is_read(data, random_llama, tmp_path):
    model = Path(shutil.copytree(random_llama, tmp_path / "short"))
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 16
    (model / "config.json").write_text(json.dumps(config))
    no_shards = Path(shutil.copytree(data, tmp_path / "data"))
    for shard in no_shards.glob("shard-*.parquet"):
        shard.unlink()  # were they read, their absence would be the error
    msg = _error_line(_train(no_shards, tmp_path / "run", init_hf=model))
    assert "seq_len 32" in msg and "16 positions (max_position_embeddings)" in msg, msg


# --- checkpoints are code ---------------------------------------------------------------------------


class _Planted:
    """Unpickling this object creates `marker`: what a planted .metadata could do unrestricted."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_file_is_refused_and_never_run(baseline, data, tmp_path):
    import pickle

    from remit.train.checkpoint import write_hashes

    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    marker = tmp_path / "code-ran"
    metadata = run / "iter_0000006" / ".metadata"
    metadata.write_bytes(pickle.dumps(_Planted(marker)))
    msg = _error_line(_train(data, run, train_iters=6))
    assert f"{metadata}: differs from the hash" in msg and "--trust-checkpoint" in msg
    # with the hashes rewritten to match (or --trust-checkpoint), the allow-list refuses it
    write_hashes(metadata.parent)
    for flags in [(), ("--trust-checkpoint",)]:
        msg = _error_line(_train(data, run, *flags, train_iters=6))
        assert f"{metadata}: holds a pickled reference to {open.__module__}.open" in msg, msg
    msg = _error_line(runs.remit_train("export-hf", "--load", run, "--out", tmp_path / "hf", "--trust-checkpoint"))
    assert f"{metadata}: holds a pickled reference to {open.__module__}.open" in msg, msg
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_a_checkpoint_without_hashes_is_refused(baseline, data, tmp_path):
    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    (run / "iter_0000006" / "remit-checkpoint-sha256.json").unlink()
    msg = _error_line(_train(data, run, train_iters=6))
    assert "no remit-checkpoint-sha256.json" in msg and "--trust-checkpoint" in msg, msg
    _ok(_train(data, run, "--trust-checkpoint", train_iters=6))  # nothing left to train: loads and ends


# --- damaged files and disks -------------------------------------------------------------------------


def test_a_truncated_safetensors_file_is_one_line(data, random_llama, tmp_path):
    model = Path(shutil.copytree(random_llama, tmp_path / "model"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    msg = _error_line(_train(data, tmp_path / "run", init_hf=model))
    assert f"{weights}: not a readable safetensors file" in msg, msg


def test_a_full_disk_during_a_save_is_one_line(data, random_llama, tmp_path):
    run = tmp_path / "run"
    proc = runs.run([
        sys.executable, str(FAULT_RUN), "enospc-save", "--data", str(data), "--save", str(run), "--init-hf",
        str(random_llama), "--train-iters", "3", "--save-interval", "1", *runs.BASE_FLAGS,
    ])  # fmt: skip
    msg = _error_line(proc)
    assert f"{run / 'iter_0000001'}: No space left on device while saving the checkpoint" in msg, msg
    assert "free disk space" in msg and proc.returncode == 1
    assert not (run / "latest_checkpointed_iteration.txt").exists()


def test_an_unwritable_save_folder_is_refused_before_the_model_is_built(data, random_llama, tmp_path):
    run = tmp_path / "run"
    proc = runs.run([
        sys.executable, str(FAULT_RUN), "eacces-save", "--data", str(data), "--save", str(run), "--init-hf",
        str(random_llama), "--train-iters", "3", *runs.BASE_FLAGS,
    ])  # fmt: skip
    msg = _error_line(proc)
    assert f"{run}/.remit-write-test-" in msg and "Permission denied" in msg and "writable" in msg, msg
    assert "remit-train: llama" not in proc.stdout  # the start line comes after the model is built
    assert not (run / "metrics.jsonl").exists()


# --- one data-parallel rank's data fails -------------------------------------------------------------


@runs.two_ranks()
def test_a_checksum_failure_on_one_rank_stops_every_rank(data, random_llama, tmp_path):
    from remit.train.dataset import RemitDataset
    from remit.train.sampler import SampleOrder, rank_sample_ids
    from tests.altered import alter_shard

    ds = RemitDataset(data)
    order = SampleOrder(ds.shard_rows, seed=7, shuffle_shards=2)
    shards = {
        r: [{ds.shard_of(int(i)) for i in rank_sample_ids(order, 4 * s, 4, r, 2)} for s in range(4)] for r in (0, 1)
    }
    read_by_0 = set().union(*shards[0])
    first_read = {}
    for s, read in enumerate(shards[1]):
        for sh in read - read_by_0:
            first_read.setdefault(sh, s + 1)
    assert first_read, "no shard that only rank 1 reads in 4 steps"
    shard = max(first_read, key=lambda sh: (first_read[sh], -sh))  # the latest first read: a mid-run failure
    step = first_read[shard]
    bad = Path(shutil.copytree(data, tmp_path / "bad"))
    file = ds.output.manifest.shards[shard]["file"]
    alter_shard(bad, file, "weight", 0, lambda w: w.__setitem__(3, w[3] + 0.01))
    proc = _train(bad, tmp_path / "run", "--skip-validate", train_iters=4, init_hf=random_llama, nproc=2)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("remit-train: error:")]
    # Every rank stops at the same step with the same line; torchrun ends the other rank once one has
    # exited, so that one may be gone before it prints (seen on megatron-core 0.19 under load).
    assert errors and len(set(errors)) == 1, proc.stderr[-4000:]
    assert errors[0].startswith(f"remit-train: error: step {step}: rank 1 could not read its data: "), errors[0]
    assert f"{bad / file}: column 'weight' does not match" in errors[0]
    assert f'File "{runs.REPO / "remit"}' not in proc.stderr
    assert [r["step"] for r in _metrics(tmp_path / "run")] == list(range(1, step))


# --- signals: no process left behind -----------------------------------------------------------------


def _tagged(tag: str) -> list[int]:
    """Processes whose environment carries `tag` (the trainer and everything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killing_the_trainer_during_a_save_leaves_no_process(data, random_llama, tmp_path, sig):
    tag = f"REMIT_TEST_TAG={uuid.uuid4().hex}"
    key, value = tag.split("=")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "remit.train", "--data", str(data), "--save", str(run), "--init-hf",
           str(random_llama), "--train-iters", "200", "--save-interval", "1", *runs.BASE_FLAGS]  # fmt: skip
    # A shell's background job starts with SIGINT ignored, and Python then keeps it ignored: undo that.
    proc = subprocess.Popen(cmd, env={**runs.env(), key: value}, cwd=runs.REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_default_sigint)  # fmt: skip
    try:
        deadline, during_save = time.monotonic() + 240, False
        while time.monotonic() < deadline and proc.poll() is None:
            children = [p for p in _tagged(tag) if p != proc.pid]
            # a helper of the second save or a later one is running (the first save starts the writer's
            # long-lived helpers, if any)
            if children and (run / "iter_0000002").exists():
                during_save = True
                break
            if (run / "iter_0000005").exists():  # saves too quick to catch: kill between them
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        proc.send_signal(sig)
        proc.wait(timeout=60)
        left = _tagged(tag)
        for _ in range(100):  # the kernel kills the helpers when their parent dies
            if not left:
                break
            time.sleep(0.1)
            left = _tagged(tag)
        assert not left, f"left running after {sig.name} (kill during a save: {during_save}): {left}"
    finally:
        for pid in [proc.pid, *_tagged(tag)]:  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


# --- a shard altered after it was written --------------------------------------------------------------


@pytest.mark.parametrize("alter", ["alter_weight", "alter_logp", "alter_segment_start"])
def test_an_altered_shard_is_refused_even_without_validation(data, random_llama, tmp_path, alter):
    """One weight, one log-prob (of the base model, which training does not use) or one segment start
    changed in a shard rewritten as valid Parquet: --skip-validate still refuses it when it is read."""
    from tests.shards import test_integrity

    bad = Path(shutil.copytree(data, tmp_path / "bad"))
    row, column = getattr(test_integrity, alter)(bad)
    msg = _error_line(_train(bad, tmp_path / "run", "--skip-validate", train_iters=40, init_hf=random_llama))
    assert f"{bad / test_integrity.FILE}: column '{column}' does not match" in msg, msg
    assert f"row {row} (sample " in msg and "Fix: " in msg, msg
