"""Worker leases: a second live worker on a unit is detected and reported; the lease of a worker that is
gone is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pytest

from remit.annotate.config import AnnotateConfig
from remit.annotate.job import UnitsBusy, run_job
from remit.annotate.lease import Leases, process_start
from remit.annotate.workdir import WorkDir
from tests.annotate.runs import fresh_copy, job


@pytest.fixture
def sleeper():
    """A live process of this host, standing for another worker."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield p
    p.kill()
    p.wait()


def plant(work: WorkDir, unit: int, **holder) -> None:
    base = asdict(Leases(work, rank=1).me())
    work.lease_path(unit).parent.mkdir(parents=True, exist_ok=True)
    work.lease_path(unit).write_text(json.dumps({**base, "token": "other", **holder}))


def test_a_live_worker_on_this_host_keeps_its_unit(tmp_path, sleeper):
    work = WorkDir(tmp_path)
    plant(work, 3, pid=sleeper.pid, started=process_start(sleeper.pid), heartbeat=time.time() - 3600)
    with Leases(work, rank=0) as leases:
        holder = leases.acquire(3)
        assert holder is not None and holder.pid == sleeper.pid  # an old heartbeat does not matter here
        assert not leases.holds(3)
        assert leases.acquire(4) is None and leases.holds(4)
    assert not work.lease_path(4).exists()  # released on exit
    assert json.loads(work.lease_path(3).read_text())["token"] == "other"  # never touched


def test_the_lease_of_a_dead_or_reused_pid_is_taken_over(tmp_path, sleeper, capsys):
    work = WorkDir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    plant(work, 0, pid=dead.pid, started="1")
    plant(work, 1, pid=sleeper.pid, started="12345")  # a pid reused by another process
    with Leases(work, rank=0) as leases:
        assert leases.acquire(0) is None and leases.acquire(1) is None
        assert leases.holds(0) and leases.holds(1)
    assert capsys.readouterr().err.count("taking over the lease of a worker that is gone") == 2


def test_another_hosts_lease_lives_by_its_heartbeat(tmp_path):
    work = WorkDir(tmp_path)
    plant(work, 0, host="node-17", boot="x", pid=1, heartbeat=time.time())
    plant(work, 1, host="node-17", boot="x", pid=1, heartbeat=time.time() - 500)
    with Leases(work, rank=0, heartbeat_s=1.0, stale_s=120.0) as leases:
        fresh = leases.acquire(0)
        assert fresh is not None and "node-17" in fresh.describe()
        assert leases.acquire(1) is None


def test_the_heartbeat_refreshes_a_held_lease(tmp_path):
    work = WorkDir(tmp_path)
    with Leases(work, rank=0, heartbeat_s=0.05, stale_s=1.0) as leases:
        assert leases.acquire(0) is None
        first = json.loads(work.lease_path(0).read_text())["heartbeat"]
        deadline = time.time() + 30
        while json.loads(work.lease_path(0).read_text())["heartbeat"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads(work.lease_path(0).read_text())["heartbeat"] > first


def test_a_second_live_worker_is_reported_and_no_manifest_written(
    model_pair, corpus, planned, tmp_path, sleeper, one_thread, capsys
):
    out = fresh_copy(planned, tmp_path / "out")
    work = WorkDir(out)
    plant(work, 1, pid=sleeper.pid, started=process_start(sleeper.pid), rank=5)
    cfg = AnnotateConfig(**job(model_pair, corpus, out))
    with pytest.raises(UnitsBusy, match=r"1 units are being scored by another live worker .*pid \d+"):
        run_job(cfg, 0, 1)
    assert not work.manifest_path.exists() and not work.shard_path(1).exists()
    assert work.shard_path(0).exists()
    # The other worker is gone: the next run takes its unit over and finishes.
    sleeper.kill()
    sleeper.wait()
    assert run_job(replace(cfg), 0, 1) == 0
    assert work.manifest_path.exists()
    assert "taking over" in capsys.readouterr().err


def test_units_left_to_another_worker_are_one_line(model_pair, corpus, planned, n_units, tmp_path, sleeper, capsys):
    from remit.annotate.cli import main

    out = fresh_copy(planned, tmp_path / "out")
    work = WorkDir(out)
    for unit in range(n_units):
        plant(work, unit, pid=sleeper.pid, started=process_start(sleeper.pid), rank=5)
    assert main(["repair", str(out), "--progress-every", "1000"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "another" in line]
    assert len(lines) == 2, err  # the note, and the error that ends the job
    assert lines[0].startswith(f"{n_units} units are being scored by another worker now; left to it: unit 0 (")
    assert f"({n_units} in all)" in lines[0] and f"unit {n_units - 1} (" not in lines[0]
