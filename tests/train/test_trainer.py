"""The real trainer on a tiny Llama, in subprocesses (as it is launched): resume, data parallel,
tensor parallel, export to HF, refusal of bad data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.megatron
REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dp_worker.py")


def _two_ranks() -> pytest.MarkDecorator:
    import torch

    return pytest.mark.skipif(
        torch.cuda.is_available() and torch.cuda.device_count() < 2,
        reason="two NCCL ranks need two GPUs (on the CPU, gloo runs both)",
    )


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _worker(data: Path, save: Path, record: Path, *, nproc: int = 1, tp: int = 1, **opts) -> None:
    args = [str(data), str(save), str(record), str(tp), *(f"{k}={v}" for k, v in opts.items())]
    if nproc == 1:
        _ok(_run([sys.executable, str(WORKER), *args]))
    else:
        _ok(
            _run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc-per-node={nproc}",
                    str(WORKER),
                    *args,
                ]
            )
        )


def _metrics(save: Path) -> list[dict]:
    from remit.train.metrics import read_metrics

    return read_metrics(save)


@pytest.fixture(scope="module")
def data(tmp_path_factory, model_pair) -> Path:
    from remit.train.preflight import tokenizer_sha256
    from tests.synthetic import make_output

    base, _ = model_pair
    return make_output(
        tmp_path_factory.mktemp("data") / "out",
        n_docs=50,
        seq_len=32,
        vocab=800,
        doc_len=(3, 60),
        rows_per_shard=6,
        seed=11,
        tokenizer_sha256=tokenizer_sha256(base),
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, data, model_pair) -> Path:
    """One process, online weights, 6 steps of 2 micro-batches of 2, checkpoints at 3 and 6."""
    root = tmp_path_factory.mktemp("baseline")
    _worker(data, root / "run", root / "ids", init_hf=model_pair[0], save_interval=3)
    return root


def test_metrics_schedule_and_checkpoints(baseline):
    rows = _metrics(baseline / "run")
    assert [r["step"] for r in rows] == list(range(1, 7))
    from remit.train.metrics import STABLE_KEYS

    # Other tools read these keys: freeze them (adding a key is fine, losing or renaming one is not).
    assert set(STABLE_KEYS) >= {"step", "loss", "loss_unweighted", "mean_weight", "lr", "tokens"}
    for key in STABLE_KEYS:
        assert all(key in r for r in rows), key
    assert all(np.isfinite(r["loss"]) and r["loss"] != r["loss_unweighted"] for r in rows)
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # warm-up
    assert lrs[-1] == 0.0 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # decay to zero
    assert rows[-1]["tokens"] > rows[0]["tokens"] > 0
    assert (baseline / "run" / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert (baseline / "run" / "iter_0000003").is_dir() and (baseline / "run" / "hf_template" / "config.json").exists()


def test_resume_reproduces_the_uninterrupted_curve(baseline, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline / "run", run)
    shutil.rmtree(run / "iter_0000006")
    (run / "latest_checkpointed_iteration.txt").write_text("3\n")
    proc = _ok(
        _run(
            [
                sys.executable,
                "-m",
                "remit.train",
                "--data",
                str(data),
                "--save",
                str(run),
                "--weights",
                "online",
                "--train-iters",
                "6",
                "--micro-batch-size",
                "2",
                "--global-batch-size",
                "4",
                "--lr",
                "1e-3",
                "--lr-warmup-iters",
                "2",
                "--seed",
                "7",
                "--shuffle-shards",
                "2",
            ]
        )
    )
    assert "resuming at step 3" in proc.stdout and "step 6/6" in proc.stdout
    full, resumed = _metrics(baseline / "run"), _metrics(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        for key in ("loss", "loss_unweighted", "mean_weight", "lr", "grad_norm", "tokens", "consumed_samples"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (a["step"], key)


@_two_ranks()
def test_two_process_data_parallel_matches_one_process(baseline, data, model_pair, tmp_path):
    _worker(data, tmp_path / "run", tmp_path / "ids", nproc=2, init_hf=model_pair[0])
    one, two = _metrics(baseline / "run"), _metrics(tmp_path / "run")
    for a, b in zip(one, two):
        for key in ("loss", "loss_unweighted", "mean_weight", "grad_norm", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=2e-5), (a["step"], key)
    ranks = [json.loads((tmp_path / f"ids.rank{r}.json").read_text()) for r in range(2)]
    single = json.loads((baseline / "ids.rank0.json").read_text())
    for step, ids in single.items():
        r0, r1 = set(ranks[0][step]), set(ranks[1][step])
        assert not r0 & r1, step  # disjoint
        assert r0 | r1 == set(ids), step  # together the same global batch as one process


@_two_ranks()
def test_tensor_parallel_2_matches_tp_1(baseline, data, model_pair, tmp_path):
    _worker(data, tmp_path / "run", tmp_path / "ids", nproc=2, tp=2, init_hf=model_pair[0])
    for a, b in zip(_metrics(baseline / "run"), _metrics(tmp_path / "run")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]


def test_export_after_training_round_trips_to_hf(data, model_pair, tmp_path):
    """A run whose single step cannot move the weights exports a model with the base model's logits."""
    import torch
    from transformers import LlamaForCausalLM

    base, _ = model_pair
    proc = _ok(
        _run(
            [
                sys.executable,
                "-m",
                "remit.train",
                "--data",
                str(data),
                "--init-hf",
                str(base),
                "--save",
                str(tmp_path / "run"),
                "--weights",
                "static",
                "--train-iters",
                "1",
                "--lr",
                "1e-12",
                "--weight-decay",
                "0",
                "--export-hf",
                str(tmp_path / "hf"),
            ]
        )
    )
    assert "exported" in proc.stdout
    ids = torch.randint(3, 800, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = LlamaForCausalLM.from_pretrained(base).eval()(ids).logits
        got = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # the subcommand exports the same checkpoint
    _ok(
        _run(
            [
                sys.executable,
                "-m",
                "remit.train",
                "export-hf",
                "--load",
                str(tmp_path / "run"),
                "--out",
                str(tmp_path / "hf2"),
            ]
        )
    )
    with torch.no_grad():
        again = LlamaForCausalLM.from_pretrained(tmp_path / "hf2").eval()(ids).logits
    torch.testing.assert_close(again, got, rtol=0, atol=0)


def test_a_corrupt_output_is_refused_before_training(data, model_pair, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    shard = bad / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-64])
    proc = _run(
        [
            sys.executable,
            "-m",
            "remit.train",
            "--data",
            str(bad),
            "--init-hf",
            str(model_pair[0]),
            "--save",
            str(tmp_path / "run"),
            "--train-iters",
            "2",
        ]
    )
    assert proc.returncode == 2
    assert "shard-00001.parquet" in proc.stderr and "does not validate" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_resume_with_another_objective_is_refused(baseline, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline / "run", run)
    proc = _run(
        [
            sys.executable,
            "-m",
            "remit.train",
            "--data",
            str(data),
            "--save",
            str(run),
            "--weights",
            "static",
            "--train-iters",
            "8",
            "--micro-batch-size",
            "2",
            "--global-batch-size",
            "4",
            "--lr",
            "1e-3",
            "--lr-warmup-iters",
            "2",
            "--seed",
            "7",
            "--shuffle-shards",
            "2",
        ]
    )
    assert proc.returncode != 0
    assert "weights = 'static' differs from the checkpoint's 'online'" in proc.stderr + proc.stdout
