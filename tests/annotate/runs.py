"""Annotation runs for the tests of the worker, the work folder, finalize and the launcher.

- `job` / `cli_flags`: one small job (the hf engine, short rows, small units), as config and as flags.
- `resume`, `plan_only`: finish or plan a run in this process.
- `final_files`, `assert_same_output`: a final output's bytes, and the comparison with a reference.
- `start_worker`, `kill_at`, `progress`: real worker processes forked from a server that has imported
  torch and transformers once (a trial then costs the scoring, not the imports), and SIGKILL at a
  chosen point of a run's progress.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from remit.annotate.claim import claim
from remit.annotate.config import AnnotateConfig
from remit.annotate.finalize import finalize
from remit.annotate.plan import describe_run, ensure_plan
from remit.annotate.workdir import MARKER, WorkDir
from remit.annotate.worker import run_worker

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
    "remit.annotate.engines.hf",
    "remit.annotate.finalize",
]


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
    setup = describe_run(cfg)
    work = WorkDir(cfg.output)
    claim(work, setup.run)
    ensure_plan(cfg, setup, work, rank=0)


def final_files(out: Path) -> dict[str, bytes]:
    """The final output's files (manifest and shards); asserts nothing else is left but the ownership
    marker (no _work/, no temporary files)."""
    names = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    assert (out / MARKER).is_file(), f"{out}: no ownership marker"
    assert names == ["manifest.json", *sorted(n for n in names if n.startswith("shard-"))], names
    assert all(n.endswith(".parquet") for n in names if n.startswith("shard-")), names
    return {n: (out / n).read_bytes() for n in names}


def assert_same_output(out: Path, reference: dict[str, bytes]) -> None:
    got = final_files(out)
    assert sorted(got) == sorted(reference)
    differ = [n for n in reference if got[n] != reference[n]]
    assert not differ, f"{out}: {differ} differ from the uninterrupted run"


# -- worker processes ---------------------------------------------------------------------------------------


def _child(kwargs: dict[str, Any], rank: int, world: int, failpoint: str | None) -> None:
    import torch

    torch.set_num_threads(1)  # see one_thread
    if failpoint:
        os.environ["REMIT_FAILPOINT"] = failpoint
    else:
        os.environ.pop("REMIT_FAILPOINT", None)
    # Kept beside the output folder (not in it) for a failing test to show; the test log stays uncluttered.
    sys.stderr = open(worker_log(kwargs, rank), "w")
    run_worker(AnnotateConfig(**kwargs), rank, world)


def worker_log(kwargs: dict[str, Any], rank: int) -> Path:
    """Where a forked worker's stderr goes: a file beside its output folder."""
    return Path(f"{kwargs['output']}.rank{rank}.stderr")


def noop() -> None:
    pass


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


def fresh_copy(planned: Path, dest: Path) -> Path:
    shutil.copytree(planned, dest)
    return dest
