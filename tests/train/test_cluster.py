"""What a cluster run needs, on the real trainer with gloo: each rank validates only its own shards, a
damaged shard stops every rank at the same step, held-out loss, SIGTERM/wall-time stops that resume
exactly, --keep-last, and TensorBoard/W&B scalars equal to metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.train import runs
from tests.train.runs import ok as _ok
from tests.train.runs import two_ranks as _two_ranks

pytestmark = pytest.mark.megatron


def _shards_of(data: Path, ids: list[int]) -> set[int]:
    from remit.shards import read_manifest

    first = np.cumsum([0] + [int(s["rows"]) for s in read_manifest(data).shards])
    return {int(np.searchsorted(first, i, side="right") - 1) for i in ids}


def _first_step_reading(data: Path, shard: int, dp_size: int, steps: int) -> int:
    """The first step whose global batch (the baseline's: 4 samples, seed 7, 2-shard windows) holds a
    sample of `shard`, from the sampler itself."""
    from remit.shards import read_manifest
    from remit.train.sampler import SampleOrder

    rows = np.array([int(s["rows"]) for s in read_manifest(data).shards])
    order = SampleOrder(rows, seed=7, shuffle_shards=2)
    for step in range(1, steps + 1):
        if shard in _shards_of(data, [int(i) for i in order.batch((step - 1) * 4, step * 4)]):
            return step
    raise AssertionError(f"no step of {steps} reads shard {shard}")


@_two_ranks()
def test_each_rank_reads_and_validates_only_its_own_shards(data, random_llama, tmp_path):
    runs.worker(data, tmp_path / "run", tmp_path / "rec", nproc=2, init_hf=random_llama, train_iters=3)
    everything: set[int] = set()
    for rank in range(2):
        rec = runs.record(tmp_path / "rec", rank)
        own = _shards_of(data, [i for ids in rec["ids"].values() for i in ids])
        shards = (
            rec["shards"][str(Path(data).resolve())]
            if str(Path(data).resolve()) in rec["shards"]
            else next(iter(rec["shards"].values()))
        )
        assert set(shards["read"]) == own, (rank, shards, own)  # nothing read ahead of the last step
        assert set(shards["validated"]) == own, (rank, shards, own)
        everything |= own
    n_shards = len(json.loads((Path(data) / "manifest.json").read_text())["shards"])
    assert len(everything) < n_shards  # the test means something: some shards were never needed


@_two_ranks()
def test_a_damaged_shard_stops_every_rank_at_the_step_that_reads_it(data, random_llama, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    victim = 5
    step = _first_step_reading(bad, victim, dp_size=2, steps=12)
    path = bad / f"shard-{victim:05d}.parquet"
    path.write_bytes(path.read_bytes()[:-64])
    proc = runs.remit_train(
        "--data", bad, "--init-hf", random_llama, "--save", tmp_path / "run", "--train-iters", "12",
        *runs.BASE_FLAGS, nproc=2,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("remit-train: error:")]
    # Every rank that got to print (torchrun ends the others once one exits) printed the same one line.
    assert lines and len(set(lines)) == 1, proc.stderr[-3000:]
    assert f"step {step}: rank" in lines[0] and path.name in lines[0], lines
    assert [r["step"] for r in runs.metrics(tmp_path / "run")] == list(range(1, step))


def _wandb_history(path: Path) -> list[dict]:
    """The history rows (`run.log` calls) of a W&B offline run file: a 7-byte header, then LevelDB's log
    format (32 KiB blocks of records with a 7-byte header: crc, length, type) holding protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def _reference_eval_loss(model_dir: Path, eval_data: Path, mode: str) -> float:
    """Σ w·ℓ / Σ tokens over every labelled token of the eval output, straight from its shards: each
    document segment through transformers from position 0, weights as stored (1 for none)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    total, count = 0.0, 0
    for shard in sorted(eval_data.glob("shard-*.parquet")):
        table = pq.read_table(shard, columns=["token_ids", "weight", "segment_starts"]).to_pylist()
        for row in table:
            tokens, weights = np.asarray(row["token_ids"]), np.asarray(row["weight"], np.float64)
            starts = list(row["segment_starts"]) + [len(tokens)]
            for s, e in zip(starts[:-1], starts[1:]):
                if e - s < 2:
                    continue
                ids = torch.as_tensor(tokens[s:e])[None]
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
                nll = -logp.gather(1, ids[0, 1:, None]).squeeze(1).numpy()
                w = weights[s + 1 : e] if mode == "static" else np.ones(e - s - 1)
                total += float((w * nll).sum())
                count += e - s - 1
    return total / count


def test_eval_loss_tensorboard_and_wandb_agree_with_an_independent_computation(data, random_llama, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    env = {**runs.env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [
            sys.executable, "-m", "remit.train", "--data", str(data), "--init-hf", str(random_llama),
            "--save", str(run), "--train-iters", "4", "--weights", "static", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--lr", "1e-3", "--seed", "7", "--eval-data", str(data),
            "--eval-interval", "2", "--tensorboard-dir", str(tmp_path / "tb"), "--wandb-project", "remit-test",
            "--export-hf", str(tmp_path / "hf"),
        ],
        env=env, cwd=runs.REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    _ok(proc)
    metrics = runs.metrics(run)
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    rows = sum(int(s["rows"]) for s in json.loads((data / "manifest.json").read_text())["shards"])
    assert rows > 0 and all(r["eval_tokens"] > 0 for r in evals)
    # the last evaluation saw the final weights, which export wrote out: an independent forward pass agrees
    assert evals[-1]["eval_loss"] == pytest.approx(_reference_eval_loss(tmp_path / "hf", data, "static"), rel=2e-5)
    assert evals[-1]["eval_loss_unweighted"] == pytest.approx(
        _reference_eval_loss(tmp_path / "hf", data, "none"), rel=2e-5
    )
    # TensorBoard: every numeric field of every record, same name, same step
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for record in metrics:
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            got = {e.step: e.value for e in acc.Scalars(key)}
            assert got[record["step"]] == pytest.approx(value, rel=1e-6), (key, record["step"])
    # W&B offline: one history row per record, every numeric field under its own name
    files = list(run.rglob("offline-run-*/*.wandb"))
    assert len(files) == 1, files
    history = {row["_step"]: row for row in _wandb_history(files[0])}
    for record in metrics:
        row = history[record["step"]]
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                assert row[key] == pytest.approx(value, rel=1e-6), (key, record["step"])


def test_sigterm_saves_exits_0_and_the_resume_reaches_the_uninterrupted_loss(baseline, data, random_llama, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "remit.train", "--data", str(data), "--save", str(run), "--train-iters", "6",
        *runs.BASE_FLAGS, "--exit-signal-handler", "--keep-last", "1", "--save-interval", "1",
    ]  # fmt: skip
    cmd += ["--init-hf", str(random_llama)]
    proc = subprocess.Popen(
        cmd, env=runs.env(), cwd=runs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped_at = int((run / "latest_checkpointed_iteration.txt").read_text())
    assert 2 <= stopped_at < 6 and "SIGTERM received" in out
    assert [p.name for p in run.glob("iter_*")] == [f"iter_{stopped_at:07d}"]  # --keep-last 1
    assert [r["step"] for r in runs.metrics(run)] == list(range(1, stopped_at + 1))
    _ok(runs.run(cmd))  # the same command resumes
    full, resumed = runs.metrics(baseline / "run"), runs.metrics(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        for key in ("loss", "loss_unweighted", "grad_norm", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)


def test_exit_duration_saves_and_exits_0(data, random_llama, tmp_path):
    run = tmp_path / "run"
    proc = _ok(
        runs.remit_train(
            "--data", data, "--init-hf", random_llama, "--save", run, "--train-iters", "6", *runs.BASE_FLAGS,
            "--exit-duration-in-mins", "0.0001",
        )
    )  # fmt: skip
    assert "--exit-duration-in-mins 0.0001 spent" in proc.stdout
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert [r["step"] for r in runs.metrics(run)] == [1]


def test_async_saves_complete_verify_and_resume_exactly(baseline, data, random_llama, tmp_path):
    from remit.train.checkpoint import verify_checkpoint

    run = tmp_path / "run"
    _ok(
        runs.remit_train(
            "--data", data, "--init-hf", random_llama, "--save", run, "--train-iters", "6", *runs.BASE_FLAGS,
            "--save-interval", "2", "--async-save", "--keep-last", "2",
        )
    )  # fmt: skip
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert sorted(p.name for p in run.glob("iter_*")) == ["iter_0000004", "iter_0000006"]
    for folder in run.glob("iter_*"):
        verify_checkpoint(folder)  # every file hashed, by the rank that wrote it
    full = runs.metrics(baseline / "run")
    assert [r["loss"] for r in runs.metrics(run)] == pytest.approx([r["loss"] for r in full], rel=1e-6)
    shutil.rmtree(run / "iter_0000006")
    (run / "latest_checkpointed_iteration.txt").write_text("4\n")
    _ok(runs.remit_train("--data", data, "--save", run, "--train-iters", "6", *runs.BASE_FLAGS, "--async-save"))
    for a, b in zip(full, runs.metrics(run)):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-9), a["step"]
