"""The local launcher, rank detection for every launcher, and the Slurm array script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from remit.annotate.cli import build_parser, main
from remit.annotate.launch import WorkerSpec, cpu_sets, job_flags, rank_from_env, visible_gpus, worker_specs
from tests.annotate.runs import assert_same_output, cli_flags, fresh_copy

# -- the launcher, end to end ---------------------------------------------------------------------------------


def test_launcher_runs_two_workers_then_finalizes(reference, model_pair, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["launch", "--workers", "2", "--gpus", "none", *cli_flags(model_pair, corpus, out)]) == 0
    assert_same_output(out, reference)
    printed = capsys.readouterr().out
    assert "worker 0/2" in printed and "worker 1/2" in printed and "manifest.json written" in printed


def test_launcher_names_the_failed_worker_and_its_log(planned, model_pair, corpus, tmp_path, capsys, monkeypatch):
    out = fresh_copy(planned, tmp_path / "out")  # planned: the launcher skips its plan step
    logs = tmp_path / "logs"
    monkeypatch.setenv("REMIT_FAILPOINT", "after-shard:1")
    rc = main(
        ["launch", "--workers", "2", "--gpus", "none", "--log-dir", str(logs), *cli_flags(model_pair, corpus, out)]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "worker 0 failed (killed by SIGKILL)" in err and str(logs / "worker-0.log") in err
    assert "worker 1 failed" in err and "rerun the same command" in err
    assert not (out / "manifest.json").exists()


# -- rank and world size from the environment -----------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1)),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "0"}, (7, 16)),
        ({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "10", "SLURM_ARRAY_TASK_MIN": "10"}, (1, 10)),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}, (3, 8)),
        ({"RANK": "5", "WORLD_SIZE": "6"}, (5, 6)),
        # srun starting torchrun on each node: SLURM_PROCID numbers nodes, RANK every process.
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "RANK": "9", "WORLD_SIZE": "16"}, (9, 16)),
        # an array task running 4 processes with srun: array index x 4 + task index.
        (
            {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": "1", "SLURM_NTASKS": "4"},
            (9, 12),
        ),
    ],
)
def test_rank_and_world_size_from_the_environment(env, expected):
    assert rank_from_env(None, None, env) == expected


def test_explicit_rank_wins_and_bad_ranks_are_refused():
    assert rank_from_env(2, 4, {"RANK": "0", "WORLD_SIZE": "1"}) == (2, 4)
    with pytest.raises(ValueError, match="need 0 <= rank < world size"):
        rank_from_env(4, 4, {})


# -- the launchers' plumbing (no scoring) ---------------------------------------------------------------------


def test_cpu_sets_are_disjoint_and_cover_the_allowed_cores():
    assert cpu_sets(3, [0, 1, 2, 3, 4, 5, 6, 7]) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert cpu_sets(2, [4, 5]) == [[4], [5]]
    assert cpu_sets(3, [0, 1]) is None  # fewer cores than workers: not pinned


def test_a_worker_names_its_cores_as_ranges():
    assert WorkerSpec(0, {}, cpus=[0, 1, 2, 3, 6]).describe() == "CPUs 0-3,6"
    assert WorkerSpec(1, {}, cpus=[5]).describe() == "CPUs 5"
    assert WorkerSpec(2, {}, cpus=[1, 3, 4]).describe() == "CPUs 1,3-4"
    assert WorkerSpec(3, {}, gpus=["2", "3"]).describe() == "GPUs 2,3"


def test_gpus_are_handed_out_by_tensor_parallel_groups():
    specs = worker_specs(2, ["0", "1", "2", "3"], tp=2, pin=True, base_env={"RANK": "3", "PATH": "/bin"})
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0,1", "2,3"]
    assert all("RANK" not in s.env and s.env["PATH"] == "/bin" for s in specs)
    with pytest.raises(ValueError, match="needs 6 GPUs; 4 are visible"):
        worker_specs(3, ["0", "1", "2", "3"], tp=2, pin=True)
    assert visible_gpus("none") == [] and visible_gpus("2, 3") == ["2", "3"]
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": "GPU-a1,GPU-b2"}) == ["GPU-a1", "GPU-b2"]
    assert visible_gpus(None, {"CUDA_VISIBLE_DEVICES": ""}) == []


def test_the_launcher_forwards_every_job_flag(model_pair, corpus, tmp_path):
    """The flags given to the workers parse back to the same job as the launcher's own."""

    given = [
        "--workers",
        "3",
        "--no-pin",
        *cli_flags(model_pair, corpus, tmp_path / "o"),
        "--eps",
        "0.1",
        "--center",
        "segment",
        "--strict",
        "--tensor-parallel-size",
        "2",
        "--keep-work",
    ]
    launch_args = build_parser("launch").parse_args(given)
    run_args = build_parser("run").parse_args(job_flags(launch_args))
    for key, value in vars(run_args).items():
        if key not in ("rank", "world_size"):
            assert getattr(launch_args, key) == value, key


SBATCH = Path(__file__).resolve().parents[2] / "remit" / "annotate" / "slurm" / "annotate_array.sbatch"


def test_slurm_script_submits_the_array_and_a_dependent_finalize(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "sbatch").write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho "$((4000 + $(wc -l < {calls})));c1"\n')
    (fake / "sbatch").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{fake}:{env['PATH']}"
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            "bash",
            str(SBATCH),
            "--workers",
            "8",
            "--",
            "--base",
            "/m/b",
            "--rl",
            "/m/r",
            "--input",
            "/d/a b.jsonl",
            "--output",
            str(out),
            "--tensor-parallel-size",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    array, final = calls.read_text().splitlines()
    assert "--array=0-7" in array and "--gres=gpu:2" in array and "REMIT_STEP=worker" in array
    assert "--dependency=afterany:4001" in final and "REMIT_STEP=finalize" in final
    assert "finalize: job 4002" in proc.stdout
    # The worker step runs `remit-annotate run` with the job flags; rank/world come from Slurm's environment.
    step = subprocess.run(
        ["bash", str(SBATCH), "--", "--base", "/m/b", "--input", "/d/a b.jsonl", "--output", "/o"],
        env={**env, "SLURM_JOB_ID": "1", "REMIT_STEP": "worker", "REMIT_BIN": "echo"},
        capture_output=True,
        text=True,
    )
    assert step.stdout.strip() == "run --base /m/b --input /d/a b.jsonl --output /o"
