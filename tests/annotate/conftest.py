"""Fixtures of the annotation tests: a small corpus, its plan, the uninterrupted run, the fork server.

The plan and the uninterrupted run are made once per session and copied by the tests that need them."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from remit.annotate.demo import sample_corpus_path
from remit.annotate.finalize import finalize
from remit.shards.validate import validate_output
from tests.annotate.runs import PRELOAD, final_files, fresh_copy, job, noop, plan_only, start_worker


@pytest.fixture(scope="module")
def one_thread():
    """Score with one thread here and in every worker. The output does not depend on it (units score
    the same with any thread count), but on a shared machine idle OpenMP threads spin for cores that
    are busy elsewhere, which made the tiny model 50x slower in these trials."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A slice of the sample corpus: 24 documents (most span rows at this seq-len) and an empty one."""
    with open(sample_corpus_path(), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    chosen = docs[:24] + [d for d in docs if d["id"] == "empty-0"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in chosen), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def spawner():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    p = ctx.Process(target=noop)  # start the fork server now (its imports), not inside a trial
    p.start()
    p.join()
    return ctx


@pytest.fixture(scope="session")
def planned(tmp_path_factory, model_pair, corpus) -> Path:
    """An output folder holding only the plan (_work/run.json, plan.json and the planned units)."""
    out = tmp_path_factory.mktemp("planned") / "out"
    plan_only(job(model_pair, corpus, out))
    return out


@pytest.fixture(scope="session")
def reference(tmp_path_factory, model_pair, corpus, planned, spawner) -> dict[str, bytes]:
    """The uninterrupted run's final files (one worker process, no interruption)."""
    out = fresh_copy(planned, tmp_path_factory.mktemp("reference") / "out")
    p = start_worker(spawner, job(model_pair, corpus, out))
    p.join()
    assert p.exitcode == 0
    finalize(out)
    assert validate_output(out) == []
    return final_files(out)


@pytest.fixture(scope="session")
def n_units(planned) -> int:
    return len(json.loads((planned / "_work" / "plan.json").read_text())["units"])
