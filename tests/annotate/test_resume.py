"""Crash-resume: workers killed at every fail point and at random moments, then resumed; resharding with
another world size; parallel workers from an empty folder.

Every trial ends by comparing bytes: the final output (manifest.json + shards) of an interrupted and
resumed run must equal an uninterrupted run's (the `reference` fixture), which is itself checked
here against an independent tokenization, so every document token is present exactly once.

Workers are killed as real processes. Most trials fork them from a server that has imported torch and
transformers once; some run the real CLI (`python -m remit.annotate.cli run`). Kill moments come from
a seeded RNG; no assertion depends on timing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from remit.annotate.config import AnnotateConfig
from remit.annotate.finalize import finalize
from remit.annotate.worker import run_worker
from remit.shards.validate import validate_output
from tests.annotate.runs import (
    SEED,
    assert_same_output,
    cli_flags,
    final_files,
    fresh_copy,
    job,
    kill_at,
    progress,
    resume,
    start_worker,
    worker_log,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
    logs = {r: worker_log(kwargs, r).read_text()[-2000:] for r in (0, 1)}
    assert [p.exitcode for p in procs] == [0, 0], logs
    finalize(out)
    assert_same_output(out, reference)


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
