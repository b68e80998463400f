"""Annotation at scale: crash trials (kill -9 at random moments and at every fail point, then resume),
resharding with another world size, parallel workers, refusals, and finalize's report.

Every trial ends by comparing bytes: the final output (manifest.json + shards) of an interrupted and
resumed run must equal an uninterrupted run's, and the uninterrupted run is itself checked against an
independent tokenization, so every document token is present exactly once.

Workers are killed as real processes. Most trials fork them from a multiprocessing fork server that
has imported torch and transformers once (so a trial costs the scoring, not 5-10 s of imports); some
run the real CLI (`python -m remit.annotate.cli run`) and the launcher. Kill moments come from a seeded
RNG; no assertion depends on timing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from remit.annotate.config import AnnotateConfig
from remit.annotate.demo import sample_corpus_path
from remit.annotate.finalize import IncompleteOutput, finalize
from remit.annotate.plan import describe_run
from remit.annotate.worker import ensure_plan, prepare_output, rank_from_env, run_worker
from remit.shards.manifest import ShardError
from remit.shards.validate import validate_output

SEQ_LEN = 48
ROWS_PER_SHARD = 4
SEED = 20260
#: Imported once by the fork server, so that each forked worker starts in milliseconds.
PRELOAD = [
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.tokenization_utils_fast",
    "remit.annotate.worker",
    "remit.annotate.engine_hf",
    "remit.annotate.finalize",
]


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Score with one thread here and in every worker. The output does not depend on it (units score
    the same with any thread count), but on a shared machine idle OpenMP threads spin for cores that
    are busy elsewhere, which made the tiny model 50x slower in these trials."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A slice of the sample corpus: 24 documents (most span rows at this seq-len) and an empty one."""
    with open(sample_corpus_path(), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    chosen = docs[:24] + [d for d in docs if d["id"] == "empty-0"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in chosen), encoding="utf-8")
    return path


def job(model_pair, corpus: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    base, rl = model_pair
    kwargs = dict(
        base=str(base),
        rl=str(rl),
        inputs=[str(corpus)],
        output=str(output),
        engine="hf",
        seq_len=SEQ_LEN,
        rows_per_shard=ROWS_PER_SHARD,
        progress_every_s=1000.0,
        plan_timeout_s=300.0,
    )
    kwargs.update(overrides)
    return kwargs


def cli_flags(model_pair, corpus: Path, output: Path, engine: str = "hf") -> list[str]:
    base, rl = model_pair
    return [
        "--base",
        str(base),
        "--rl",
        str(rl),
        "--input",
        str(corpus),
        "--output",
        str(output),
        "--engine",
        engine,
        "--seq-len",
        str(SEQ_LEN),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--progress-every",
        "1000",
    ]


def resume(kwargs: dict[str, Any], world: int = 1) -> dict[str, Any]:
    """Finish the run in this process (all ranks of `world` one after the other), then finalize."""
    cfg = AnnotateConfig(**kwargs)
    for rank in range(world):
        run_worker(cfg, rank, world)
    return finalize(cfg.output)


def plan_only(kwargs: dict[str, Any]) -> None:
    cfg = AnnotateConfig(**kwargs)
    run, tokenizer, special = describe_run(cfg)
    prepare_output(cfg, run)
    ensure_plan(cfg, run, tokenizer, special, rank=0)


def final_files(out: Path) -> dict[str, bytes]:
    """The final output's files; asserts nothing else is left (no _work/, no temporary files)."""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", *sorted(n for n in names if n.startswith("shard-"))], names
    assert all(n.endswith(".parquet") for n in names if n.startswith("shard-")), names
    return {n: (out / n).read_bytes() for n in names}


def assert_same_output(out: Path, reference: dict[str, bytes]) -> None:
    got = final_files(out)
    assert sorted(got) == sorted(reference)
    differ = [n for n in reference if got[n] != reference[n]]
    assert not differ, f"{out}: {differ} differ from the uninterrupted run"


# -- the fork server: real worker processes without paying the imports each time ----------------------------


def _child(kwargs: dict[str, Any], rank: int, world: int, failpoint: str | None) -> None:
    import torch

    torch.set_num_threads(1)  # see one_thread
    if failpoint:
        os.environ["REMIT_FAILPOINT"] = failpoint
    else:
        os.environ.pop("REMIT_FAILPOINT", None)
    sys.stderr = open(os.devnull, "w")  # progress lines of killed workers would only clutter the test log
    run_worker(AnnotateConfig(**kwargs), rank, world)


def _noop() -> None:
    pass


@pytest.fixture(scope="module")
def spawner():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    p = ctx.Process(target=_noop)  # start the fork server now (its imports), not inside a trial
    p.start()
    p.join()
    return ctx


def start_worker(ctx, kwargs: dict[str, Any], rank: int = 0, world: int = 1, failpoint: str | None = None):
    p = ctx.Process(target=_child, args=(kwargs, rank, world, failpoint))
    p.start()
    return p


def progress(out: Path) -> int:
    """Units with base log-probs or a record, plus units with a record: grows 0 -> 2 x units over a run."""
    names = lambda d: {p.name.split(".")[0] for p in (out / "_work" / d).glob("unit-*")}  # noqa: E731
    done = {n for n in names("done") if (out / "_work" / "done" / f"{n}.json").exists()}
    return len(names("base") | done) + len(done)


def kill_at(p, out: Path, events: int, delay: float) -> bool:
    """SIGKILL `p` `delay` seconds after the run's progress reaches `events` (unless it ended first).

    Aiming at progress rather than at wall time makes the kills land inside the run however loaded the
    machine is; the random delay after the event spreads them over scoring, writing and renaming.
    Returns True when the worker was killed."""
    while p.is_alive() and progress(out) < events:
        time.sleep(0.002)
    p.join(delay)
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
    p.join()
    return p.exitcode == -signal.SIGKILL


@pytest.fixture(scope="module")
def planned(tmp_path_factory, model_pair, corpus) -> Path:
    """An output folder holding only the plan (_work/run.json, plan.json and the planned units)."""
    out = tmp_path_factory.mktemp("planned") / "out"
    plan_only(job(model_pair, corpus, out))
    return out


def fresh_copy(planned: Path, dest: Path) -> Path:
    shutil.copytree(planned, dest)
    return dest


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_pair, corpus, planned, spawner) -> dict[str, bytes]:
    """The uninterrupted run's final files (one worker process, no interruption)."""
    out = fresh_copy(planned, tmp_path_factory.mktemp("reference") / "out")
    p = start_worker(spawner, job(model_pair, corpus, out))
    p.join()
    assert p.exitcode == 0
    finalize(out)
    assert validate_output(out) == []
    return final_files(out)


@pytest.fixture(scope="module")
def n_units(planned) -> int:
    return len(json.loads((planned / "_work" / "plan.json").read_text())["units"])


# -- the reference itself: nothing lost, nothing duplicated ---------------------------------------------------


def test_reference_holds_every_document_token_once(reference, model_pair, corpus, tmp_path):
    """Rebuild every document from its segments and compare with an independent tokenization."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    files = reference
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    rows = pa.concat_tables([pq.read_table(tmp_path / n) for n in sorted(files) if n.endswith(".parquet")])
    assert rows.column("sample_id").to_pylist() == list(range(rows.num_rows))
    pieces: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for row in rows.select(["token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets"]).to_pylist():
        bounds = [*row["segment_starts"], len(row["token_ids"])]
        for doc, off, a, b in zip(row["segment_doc_ids"], row["segment_doc_offsets"], bounds[:-1], bounds[1:]):
            pieces[doc].append((off, row["token_ids"][a:b]))
    tok = AutoTokenizer.from_pretrained(str(model_pair[0]))
    docs = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    assert sorted(pieces) == sorted(d["id"] for d in docs if d["text"])
    for d in docs:
        if not d["text"]:
            continue
        rebuilt, pos = [], 0
        for off, toks in sorted(pieces[d["id"]]):
            assert off == pos, f"{d['id']}: gap or overlap at token {off}"
            rebuilt += toks
            pos += len(toks)
        assert rebuilt == tok(d["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id], d["id"]


# -- crash trials ------------------------------------------------------------------------------------------


FAILPOINT_TRIALS = [
    "base-saved:2",  # in the middle of the base pass
    "before-shard:2",  # in the middle of the RL pass, nothing of the unit's shard written
    "shard-tmp-written:3",  # in the middle of a shard write (temporary file, not yet verified or renamed)
    "after-shard:2",  # between the shard's rename and its completion record
    "after-done:3",  # between the completion record and the deletion of the base log-probs
]


@pytest.mark.parametrize("point", FAILPOINT_TRIALS)
def test_kill_at_fail_point_then_resume_is_byte_identical(
    point, spawner, planned, reference, model_pair, corpus, tmp_path
):
    out = fresh_copy(planned, tmp_path / "out")
    kwargs = job(model_pair, corpus, out)
    p = start_worker(spawner, kwargs, failpoint=point)
    p.join()
    assert p.exitcode == -signal.SIGKILL, f"{point}: the worker was not killed there"
    resume(kwargs)
    assert_same_output(out, reference)


RANDOM_TRIALS = 6


def test_kill_at_random_moments_then_resume_is_byte_identical(
    spawner, planned, reference, model_pair, corpus, tmp_path, n_units
):
    """Workers killed at seeded random moments across the run, each resumed and compared.

    The last trial is killed twice: once at random, then again at random during its resume.
    """
    rng = random.Random(SEED)
    killed = 0
    for trial in range(RANDOM_TRIALS):
        out = fresh_copy(planned, tmp_path / f"out{trial}")
        kwargs = job(model_pair, corpus, out)
        for _ in range(2 if trial == RANDOM_TRIALS - 1 else 1):
            events = rng.randrange(progress(out), 2 * n_units)
            killed += kill_at(start_worker(spawner, kwargs), out, events, rng.uniform(0.0, 0.08))
        resume(kwargs)
        assert_same_output(out, reference)
    assert killed >= RANDOM_TRIALS, f"only {killed} of {RANDOM_TRIALS + 1} kills landed before the worker finished"


def test_kill_the_cli_worker_then_resume_with_another_world_size(planned, reference, model_pair, corpus, tmp_path):
    """The real command: `python -m remit.annotate.cli run`, killed at a fail point in its second unit's
    write; then the rest is finished by three workers instead of one."""
    out = fresh_copy(planned, tmp_path / "out")
    env = {**os.environ, "REMIT_FAILPOINT": "after-shard:2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "remit.annotate.cli", "run", *cli_flags(model_pair, corpus, out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((out / "_work" / "done").glob("*.json"))) == 1
    resume(job(model_pair, corpus, out), world=3)
    assert_same_output(out, reference)


def test_resharding_with_another_world_size_gives_the_same_output(
    planned, reference, model_pair, corpus, tmp_path, spawner
):
    """Rank 1 of 3 finishes, rank 0 of 3 is killed half-way; ranks 0 and 1 of 2 finish the rest."""
    out = fresh_copy(planned, tmp_path / "out")
    kwargs = job(model_pair, corpus, out)
    run_worker(AnnotateConfig(**kwargs), 1, 3)
    p = start_worker(spawner, kwargs, rank=0, world=3, failpoint="after-done:2")
    p.join()
    assert p.exitcode == -signal.SIGKILL
    resume(kwargs, world=2)
    assert_same_output(out, reference)


def test_kill_while_planning_then_resume(reference, model_pair, corpus, tmp_path, planned):
    """A worker killed while planning leaves planned units but no plan.json (written last): the next
    rank 0 discards them and plans again, and the output is the same."""
    out = fresh_copy(planned, tmp_path / "out")
    work = out / "_work"
    (work / "plan.json").unlink()
    units = sorted((work / "plan").glob("unit-*.parquet"))
    units[-1].write_bytes(units[-1].read_bytes()[:100])  # the unit being written when the kill came
    for extra in units[len(units) // 2 :]:
        extra.unlink()
    (work / "plan" / "unit-99999.parquet.tmp").write_bytes(b"partial")
    resume(job(model_pair, corpus, out))
    assert_same_output(out, reference)


# -- merging -------------------------------------------------------------------------------------------------


def test_two_workers_in_parallel_from_an_empty_folder_then_finalize(spawner, reference, model_pair, corpus, tmp_path):
    """Both workers start at once on an empty folder: both write run.json, rank 0 plans while rank 1
    waits for plan.json, then each scores its half. Finalize gives the one-worker output."""
    out = tmp_path / "out"
    kwargs = job(model_pair, corpus, out)
    procs = [start_worker(spawner, kwargs, rank=r, world=2) for r in (1, 0)]
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    finalize(out)
    assert_same_output(out, reference)


def test_launcher_runs_two_workers_then_finalizes(reference, model_pair, corpus, tmp_path, capsys):
    from remit.annotate.cli import main

    out = tmp_path / "out"
    assert main(["launch", "--workers", "2", "--gpus", "none", *cli_flags(model_pair, corpus, out)]) == 0
    assert_same_output(out, reference)
    printed = capsys.readouterr().out
    assert "worker 0/2" in printed and "worker 1/2" in printed and "manifest.json written" in printed


def test_launcher_names_the_failed_worker_and_its_log(planned, model_pair, corpus, tmp_path, capsys, monkeypatch):
    from remit.annotate.cli import main

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


# -- refusals and reports -------------------------------------------------------------------------------------


def test_a_different_runs_output_is_refused(planned, model_pair, corpus, tmp_path, reference):
    unfinished = fresh_copy(planned, tmp_path / "unfinished")
    with pytest.raises(ShardError, match="different run"):
        run_worker(AnnotateConfig(**job(model_pair, corpus, unfinished, eps=0.1)))
    finished = tmp_path / "finished"
    finished.mkdir()
    for name, data in reference.items():
        (finished / name).write_bytes(data)
    with pytest.raises(ShardError, match="different run"):
        run_worker(AnnotateConfig(**job(model_pair, corpus, finished, seq_len=SEQ_LEN + 1)))
    # The same run on its finished output is a no-op.
    stats, _ = run_worker(AnnotateConfig(**job(model_pair, corpus, finished)))
    assert stats.units_scored == 0
    assert_same_output(finished, reference)


def test_finalize_lists_missing_units_with_the_command_that_finishes_them(
    planned, reference, model_pair, corpus, tmp_path
):
    from remit.annotate.cli import main

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


def test_leftovers_of_a_killed_worker_are_cleaned(planned, model_pair, corpus, tmp_path, spawner):
    """An orphan base file (killed after the record) and temporary files are removed on the rerun."""
    out = fresh_copy(planned, tmp_path / "out")
    kwargs = job(model_pair, corpus, out)
    p = start_worker(spawner, kwargs, failpoint="after-done:1")
    p.join()
    assert p.exitcode == -signal.SIGKILL
    assert (out / "_work" / "base" / "unit-00000.npz").exists()  # the orphan
    (out / "shard-00003.parquet.tmp").write_bytes(b"half a shard")
    (out / "_work" / "done" / "unit-00004.json.123-abc.tmp").write_text("{")
    kwargs["keep_work"] = True
    run_worker(AnnotateConfig(**kwargs))
    assert not list(out.glob("*.tmp")) and not list((out / "_work").rglob("*.tmp"))
    assert not list((out / "_work" / "base").iterdir())


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


# -- vLLM --------------------------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_worker_killed_between_shard_and_record_resumes_byte_identical(model_pair, corpus, tmp_path):
    """The default engine, as the CLI runs it: an uninterrupted run, and one killed after a shard's rename
    (before its completion record) and resumed. vLLM runs only in subprocesses (it binds the process)."""

    def run_cli(out: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "REMIT_FAILPOINT"}
        if failpoint:
            env["REMIT_FAILPOINT"] = failpoint
        return subprocess.run(
            [sys.executable, "-m", "remit.annotate.cli", "run", *cli_flags(model_pair, corpus, out, engine="vllm")],
            env=env,
            capture_output=True,
            text=True,
        )

    # Both plan from scratch: the engine is part of the run, so the hf-planned template does not apply.
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    proc = run_cli(crashed, failpoint="after-shard:3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((crashed / "_work" / "done").glob("*.json"))) == 2
    proc = run_cli(crashed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli(clean)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert validate_output(clean) == []
    assert_same_output(crashed, final_files(clean))


# -- the launchers' plumbing (no scoring) ---------------------------------------------------------------------


def test_cpu_sets_are_disjoint_and_cover_the_allowed_cores():
    from remit.annotate.launch import cpu_sets

    assert cpu_sets(3, [0, 1, 2, 3, 4, 5, 6, 7]) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert cpu_sets(2, [4, 5]) == [[4], [5]]
    assert cpu_sets(3, [0, 1]) is None  # fewer cores than workers: not pinned


def test_gpus_are_handed_out_by_tensor_parallel_groups():
    from remit.annotate.launch import visible_gpus, worker_specs

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
    from remit.annotate.cli import build_parser
    from remit.annotate.launch import job_flags

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
