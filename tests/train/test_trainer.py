"""The real trainer on a tiny Llama, in subprocesses (as it is launched): resume, data parallel,
tensor parallel, export to HF, refusal of bad data, bf16 end to end, non-finite steps."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.altered import rerecord_shard
from tests.train import runs
from tests.train.runs import ok as _ok
from tests.train.runs import run as _run
from tests.train.runs import two_ranks as _two_ranks
from tests.train.runs import worker as _worker

pytestmark = pytest.mark.megatron


def _metrics(save: Path) -> list[dict]:
    return runs.metrics(save)


def _lr(k: int, *, peak: float, warmup: int, decay: int, floor: float = 0.0, style: str = "cosine") -> float:
    """The documented LR of step k (docs/training.md), written out independently of Megatron's scheduler."""
    import math

    if k <= warmup:
        return peak * k / warmup
    if k > decay:
        return floor
    ratio = (k - warmup) / (decay + 1 - warmup)
    coeff = 0.5 * (1 + math.cos(math.pi * ratio)) if style == "cosine" else 1 - ratio
    return floor + (peak - floor) * coeff


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
    assert lrs == pytest.approx([_lr(k, peak=1e-3, warmup=2, decay=6) for k in range(1, 7)], rel=1e-12)
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # warm-up
    assert lrs[-1] > 0.0 and all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # the last step still trains
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
                "--train-iters",
                "6",
                *runs.BASE_FLAGS,
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
def test_two_process_data_parallel_matches_one_process(baseline, data, random_llama, tmp_path):
    _worker(data, tmp_path / "run", tmp_path / "rec", nproc=2, init_hf=random_llama, probe=1)
    one, two = _metrics(baseline / "run"), _metrics(tmp_path / "run")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        for key in ("loss", "loss_unweighted", "mean_weight", "grad_norm", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=2e-5), (a["step"], key)
    ranks = [runs.record(tmp_path / "rec", r) for r in range(2)]
    single = runs.record(baseline / "rec", 0)["ids"]
    for step, ids in single.items():
        r0, r1 = set(ranks[0]["ids"][step]), set(ranks[1]["ids"][step])
        assert not r0 & r1, step  # disjoint
        assert r0 | r1 == set(ids), step  # together the same global batch as one process
    for r in ranks:  # without the flags: every rank holds all Adam state; the reduction waits for the end
        assert r["optimizer"] != "DistributedOptimizer" and r["adam_state_numel"] == r["model_numel"]
        assert r["sync_starts"]["in_backward"] == 0 and r["sync_starts"]["at_finish"] > 0


@_two_ranks()
def test_tensor_parallel_2_matches_tp_1(baseline, data, random_llama, tmp_path):
    _worker(data, tmp_path / "run", tmp_path / "rec", nproc=2, tp=2, init_hf=random_llama, probe=1)
    for a, b in zip(_metrics(baseline / "run"), _metrics(tmp_path / "run")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), a["step"]
    for r in range(2):  # without --sequence-parallel every layer sees the whole sequence
        assert set(runs.record(tmp_path / "rec", r)["layer_seq"]) == {32}


def test_export_after_training_round_trips_to_hf(data, random_llama, tmp_path):
    """A run whose single step cannot move the weights exports a model with the base model's logits."""
    import torch
    from transformers import LlamaForCausalLM

    base = random_llama
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


def test_a_bad_listing_is_refused_before_training(data, random_llama, tmp_path):
    """Start-up reads no shard, but checks the manifest and what it lists: a stray shard beside them
    (the views would read it) is refused before any step."""
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    shutil.copy(bad / "shard-00001.parquet", bad / "shard-00099.parquet")
    proc = runs.remit_train("--data", bad, "--init-hf", random_llama, "--save", tmp_path / "run", "--train-iters", "2")
    assert proc.returncode == 2
    assert "shard-00099.parquet" in proc.stderr and "does not validate" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("skip_validate", [False, True])
def test_a_truncated_shard_stops_the_run_at_the_step_that_reads_it(data, random_llama, tmp_path, skip_validate):
    """Each shard is validated (or, with --skip-validate, only checksummed) when first read: a damaged one
    stops the run at the first step that needs it, in one line naming it; the steps before it count."""
    from remit.shards import read_manifest
    from remit.train.sampler import SampleOrder

    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    shard = bad / "shard-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-64])
    rows = np.array([int(s["rows"]) for s in read_manifest(bad).shards])
    first = np.concatenate([[0], np.cumsum(rows)])
    order = SampleOrder(rows, seed=7, shuffle_shards=2)
    step = next(k for k in range(1, 13) if any(first[2] <= i < first[3] for i in order.batch((k - 1) * 4, k * 4)))
    proc = runs.remit_train(
        "--data", bad, "--init-hf", random_llama, "--save", tmp_path / "run", "--train-iters", "12",
        *runs.BASE_FLAGS, *(["--skip-validate"] if skip_validate else []),
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"step {step}: rank 0 could not read its data" in errors[0], proc.stderr[-2000:]
    assert "shard-00002.parquet" in errors[0]
    assert [r["step"] for r in _metrics(tmp_path / "run")] == list(range(1, step))


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


# --- bf16 end to end ------------------------------------------------------------------------------


def test_bf16_resume_continues_the_uninterrupted_curve_and_exports(data, random_llama, tmp_path):
    """bf16 saves (the norm weights are bf16 too), resumes onto the uninterrupted curve (fp32 main
    parameters and Adam state restored) and exports the trained bf16 weights."""
    import torch
    from transformers import LlamaForCausalLM

    from remit.train.convert import read_hf_weights

    full = tmp_path / "full"
    _worker(data, full, tmp_path / "rec", init_hf=random_llama, bf16=True, train_iters=4, save_interval=2)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "iter_0000004")
    (resumed / "latest_checkpointed_iteration.txt").write_text("2\n")
    proc = _ok(
        runs.remit_train(
            "--data", data, "--save", resumed, "--train-iters", "4", "--bf16", "--export-hf", tmp_path / "hf",
            *runs.BASE_FLAGS,
        )
    )  # fmt: skip
    assert "resuming at step 2" in proc.stdout and "bf16" in proc.stdout
    a, b = _metrics(full), _metrics(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        for key in ("loss", "loss_unweighted", "mean_weight", "lr", "grad_norm", "tokens"):
            assert y[key] == pytest.approx(x[key], rel=1e-6, abs=1e-12), (x["step"], key)
    assert a[-1]["loss"] != a[0]["loss"]
    # The export of the resumed run equals the export of the uninterrupted run's checkpoint.
    _ok(runs.remit_train("export-hf", "--load", full, "--out", tmp_path / "hf-full"))
    got, ref, start = (
        read_hf_weights(tmp_path / "hf"),
        read_hf_weights(tmp_path / "hf-full"),
        read_hf_weights(random_llama),
    )
    assert got.keys() == ref.keys() == start.keys()
    for name in got:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0, msg=name)
        assert torch.equal(got[name], got[name].bfloat16().float()), name  # bf16 values
    assert any(not torch.equal(got[n], start[n].bfloat16().float()) for n in got)  # and trained
    ids = torch.randint(3, 800, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(ids).logits
    assert bool(torch.isfinite(logits).all())


# --- non-finite steps -----------------------------------------------------------------------------


def _corrupt_logp_rl(data: Path, dst: Path, sample_id: int) -> Path:
    """A copy of `data` (same run id) with one stored log p_RL of `sample_id` set to -inf, at a position
    whose label carries a loss (so `online` reads it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from remit.train.dataset import RemitDataset

    shutil.copytree(data, dst)
    ds = RemitDataset(data)
    position = int(np.flatnonzero(ds[sample_id]["loss_mask"] > 0)[0]) + 1  # label-aligned: row value i+1
    shard = ds.shard_of(sample_id)
    path = dst / ds.output.manifest.shards[shard]["file"]
    table = pq.read_table(path)
    values = table.column("logp_rl").to_pylist()
    values[sample_id - int(ds.shard_first[shard])][position] = float("-inf")
    i = table.schema.get_field_index("logp_rl")
    table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    pq.write_table(table, path)
    rerecord_shard(dst, path.name)  # as if the scorer had written -inf: the checksums pass
    return dst


@_two_ranks()
def test_a_nonfinite_loss_stops_the_run_before_the_update_and_it_resumes(baseline, data, random_llama, tmp_path):
    from remit.train.dataset import RemitDataset
    from remit.train.sampler import SampleOrder, rank_sample_ids

    # The first sample that data-parallel rank 1 of 2 trains on at step 5 (after 4 steps of 4 samples).
    order = SampleOrder(RemitDataset(data).shard_rows, seed=7, shuffle_shards=2)
    bad_id = int(rank_sample_ids(order, 16, 4, 1, 2)[0])
    bad = _corrupt_logp_rl(data, tmp_path / "bad", bad_id)
    run = tmp_path / "run"
    flags = ["--train-iters", "6", "--save-interval", "3", *runs.BASE_FLAGS]
    proc = runs.remit_train(
        "--data", bad, "--init-hf", random_llama, "--save", run, "--skip-validate", *flags, nproc=2
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("remit-train: error:")]
    # One line per rank, the same line; torchrun ends the other rank once one has exited, so that one may
    # be gone before it prints.
    assert errors and len(set(errors)) == 1, proc.stderr[-3000:]
    msg = errors[0]
    assert msg.startswith(
        f"remit-train: error: step 5: the loss is not finite on rank 1 (data-parallel rank 1), samples {bad_id}. "
    ), msg
    assert "did not apply the step" in msg and f"{run / 'iter_0000003'}, is intact" in msg
    # (torchrun adds its own report of the failed ranks; no traceback comes from the trainer)
    assert f'File "{runs.REPO / "remit"}' not in proc.stderr and "NonFiniteStepError" not in proc.stderr
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3, 4]
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    # The last checkpoint is usable: resumed on the clean data (same run id), the run ends on the
    # uninterrupted one-process curve.
    _ok(runs.remit_train("--data", data, "--save", run, *flags))
    for a, b in zip(_metrics(baseline / "run"), _metrics(run)):
        for key in ("loss", "loss_unweighted", "mean_weight", "grad_norm", "tokens"):
            assert b[key] == pytest.approx(a[key], rel=2e-5), (a["step"], key)


def test_a_nonfinite_gradient_stops_the_run_before_the_update(data, random_llama, tmp_path):
    """A fault hook writes +inf into a gradient of step 2 after the backward pass: the guard refuses the
    step before the optimizer touches a weight, and step 1's checkpoint stays the latest."""
    from remit.train.dataset import RemitDataset
    from remit.train.sampler import SampleOrder, rank_sample_ids

    run, rec = tmp_path / "run", tmp_path / "rec"
    _worker(data, run, rec, init_hf=random_llama, train_iters=4, save_interval=1, inject=2)
    out = runs.record(rec, 0)
    order = SampleOrder(RemitDataset(data).shard_rows, seed=7, shuffle_shards=2)
    step_2 = ", ".join(str(int(i)) for i in rank_sample_ids(order, 4, 4, 0, 1))
    assert out["error"].startswith("step 2: the gradient norm is inf while the loss"), out["error"]
    assert f"data-parallel rank 0 (rank 0): {step_2}. " in out["error"], out["error"]
    assert f"{run / 'iter_0000001'}, is intact" in out["error"] and "\n" not in out["error"]
    assert list(out["ids"]) == ["1"]  # step 2 never finished
    assert out["weights_unchanged"] is True
    assert [r["step"] for r in _metrics(run)] == [1]
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


def test_tflops_count_each_step_s_documents(baseline, data):
    """metrics.jsonl's tflops x step time is the step's model FLOPs, with causal attention per document:
    recomputed here from the shards' own segment starts and the samples each step trained on."""
    import pyarrow.parquet as pq

    from remit.train.architecture import read_architecture
    from remit.train.flops import step_flops

    arch = read_architecture(baseline / "run" / "hf_template")
    rows = []
    for shard in sorted(Path(data).glob("shard-*.parquet")):
        rows += pq.read_table(shard, columns=["n_tokens", "segment_starts"]).to_pylist()
    ids = runs.record(baseline / "rec", 0)["ids"]
    for record in _metrics(baseline / "run"):
        expected = 0.0
        for sample in ids[str(record["step"])]:
            n, starts = rows[sample]["n_tokens"], rows[sample]["segment_starts"]
            bounds = [s for s in starts if s < n - 1] + [n - 1]  # n tokens: n - 1 input positions
            expected += step_flops(arch, np.diff(bounds))
        got = record["tflops"] * record["step_time_s"] * 1e12
        assert got == pytest.approx(expected, rel=1e-9), record["step"]
        assert "mfu" not in record  # no peak known for a CPU
