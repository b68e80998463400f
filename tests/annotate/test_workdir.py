"""The work folder: its records, the plan, completion records, base log-probs, leftovers, cleanup.

The unit tests use hand-made records and files (no model); one test runs real workers on the shared plan.
"""

from __future__ import annotations

import json
import shutil
import signal
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.annotate.claim import claim
from remit.annotate.config import AnnotateConfig
from remit.annotate.records import CompletionRecord, Plan, PlannedUnit, PlanTotals, RunDescription
from remit.annotate.workdir import MARKER, WorkDir, shard_name
from remit.annotate.worker import run_worker
from remit.common.atomic import temporary_path
from remit.shards.manifest import ShardError
from remit.shards.writer import ShardInfo
from tests.annotate.runs import fresh_copy, job, start_worker


def run_description(seed: int = 0) -> RunDescription:
    """A run description whose parts are placeholders; `seed` changes its config (and so its id)."""
    parts: dict[str, Any] = {
        key: {} for key in ("models", "tokenizer", "packing", "weights", "engine_request", "input")
    }
    return RunDescription.create(remit_version="test", config={"seq_len": 48 + seed}, **parts)


def planned_unit(n: int, rows: int = 4, tokens: int = 196) -> PlannedUnit:
    return PlannedUnit(
        unit=n, file=shard_name(n), first_sample_id=4 * n, rows=rows, tokens=tokens, token_checksum=f"blake2b128:{n}"
    )


def record_for(work: WorkDir, unit: PlannedUnit, run_id: str, size: int = 100) -> CompletionRecord:
    work.shard_path(unit.unit).write_bytes(bytes(size))
    planned = {k: getattr(unit, k) for k in ("file", "rows", "tokens", "first_sample_id", "token_checksum")}
    shard = ShardInfo(**planned, column_checksums={"token_ids": "blake2b128:x"}, file_sha256="sha256:x", bytes=size)
    return CompletionRecord(
        unit=unit.unit, run_id=run_id, shard=shard, engine={"name": "hf"}, engine_base={"name": "hf"}, passes="both"
    )


# -- records ----------------------------------------------------------------------------------------------


def test_records_read_back_what_they_wrote_and_refuse_malformed_ones(tmp_path):
    run = run_description()
    assert RunDescription.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    assert run.run_id != run_description(1).run_id  # the id hashes the content
    plan = Plan(
        run.run_id,
        (planned_unit(0), planned_unit(1)),
        PlanTotals(2, 392, 8, 2, 49, {"blank line": 1}, ["x"], 1, ["notes.csv"]),
        0.5,
    )
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    record = record_for(WorkDir(tmp_path), planned_unit(0), run.run_id)
    on_disk = record.to_dict()
    # The completion record's JSON: the shard's manifest entry plus the unit, run and engines, flat.
    assert sorted(on_disk) == sorted(
        ["file", "rows", "tokens", "first_sample_id", "token_checksum", "column_checksums", "file_sha256", "bytes"]
        + ["unit", "run_id", "engine", "engine_base", "passes"]
    )
    assert CompletionRecord.from_dict(on_disk) == record
    legacy = {k: v for k, v in on_disk.items() if k != "passes"}  # written before the passes field
    assert CompletionRecord.from_dict(legacy) == record
    rl_only = {**on_disk, "passes": "rl", "engine_base": None}
    assert CompletionRecord.from_dict(rl_only).passes == "rl"
    for bad in (
        {k: v for k, v in on_disk.items() if k != "bytes"},
        [],
        {"units": []},
        {**on_disk, "passes": "rl"},  # an RL-only shard has no base engine
        {**on_disk, "passes": "base"},
    ):
        with pytest.raises(ValueError):
            CompletionRecord.from_dict(bad)
    with pytest.raises(ValueError, match="'units' missing"):
        Plan.from_dict({"run_id": "x", "totals": {}, "seconds": 0})


# -- removing only what remit created ---------------------------------------------------------------------


def test_finish_removes_only_what_remit_created(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    ours = [
        temporary_path(work.manifest_path),
        temporary_path(work.shard_path(3)),
        work.output / "shard-00004.parquet.tmp",
        work.record_path(0),
        work.base_path(1),
        work.lease_path(2),
        work.unit_plan_path(0),
        work.logs_dir / "worker-3.log",
    ]
    theirs = [
        work.output / "notes.tmp",  # a *.tmp that is no temporary file of remit's
        work.output / "shard-00001.parquet.backup.tmp",
        work.root / "notes.txt",
        work.plan_dir / "unit-0000x.parquet",
    ]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    work.finish(keep_work=False)
    assert [p for p in ours if p.exists()] == []
    assert all(p.exists() for p in theirs)
    assert not work.run_path.exists() and not work.done_dir.exists()
    assert sorted(p.name for p in work.root.iterdir()) == ["notes.txt", "plan"]


def test_planning_again_removes_only_planned_units(tmp_path):
    work = WorkDir(tmp_path / "out")
    claim(work, run_description())
    work.start_plan()
    (work.plan_dir / "unit-00000.parquet").write_bytes(b"a killed planner's unit")
    (work.plan_dir / "my-notes.parquet").write_bytes(b"x")
    work.start_plan()
    assert sorted(p.name for p in work.plan_dir.iterdir()) == ["my-notes.parquet"]


# -- the run description and the plan -------------------------------------------------------------------


def test_an_unreadable_run_description_names_the_file_and_the_fix(tmp_path):
    work = WorkDir(tmp_path / "out")
    claim(work, run_description())
    work.run_path.write_text("")  # a node crash can leave an empty file
    with pytest.raises(ShardError, match=r"run\.json: unreadable .* Delete it and rerun"):
        work.read_run()
    assert (
        claim(work, run_description()).complete is False
    )  # written again: an unreadable description is no description
    assert work.read_run() == run_description()


def test_a_plan_of_another_run_or_a_broken_one_is_refused(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    assert work.read_plan(run.run_id) is None
    plan = Plan(run.run_id, (planned_unit(0),), PlanTotals(1, 196, 4, 1, 49, {}, [], 0, []), 0.1)
    work.write_plan(plan)
    assert work.read_plan(run.run_id) == plan == work.read_plan()
    with pytest.raises(ShardError, match="planned for another run"):
        work.read_plan(run_description(1).run_id)
    work.plan_path.write_text('{"run_id": "x"}')
    with pytest.raises(ShardError, match="plan.json: unreadable"):
        work.read_plan()


# -- completion records -----------------------------------------------------------------------------------


def test_a_record_is_trusted_only_when_everything_agrees(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    unit = planned_unit(3)
    assert work.trusted_record(unit, run.run_id) == (None, "")  # no record: nothing to say
    record = record_for(work, unit, run.run_id)
    work.write_record(record)
    assert work.trusted_record(unit, run.run_id) == (record, "")
    assert work.trusted_record(unit, "another-run")[1] == "its completion record belongs to another run"
    assert work.trusted_record(planned_unit(3, rows=5), run.run_id)[1] == (
        "its completion record says rows = 4, the plan 5"
    )
    work.shard_path(3).write_bytes(bytes(99))
    assert work.trusted_record(unit, run.run_id)[1] == "its shard shard-00003.parquet has 99 bytes, the record says 100"
    work.shard_path(3).unlink()
    assert work.trusted_record(unit, run.run_id)[1] == "its shard shard-00003.parquet is missing"
    work.record_path(3).write_text("{")
    assert work.trusted_record(unit, run.run_id)[1] == "its completion record is unreadable"
    work.drop_record(3)
    assert not work.record_path(3).exists() and work.count_records() == 0


def test_the_passes_of_the_records_and_the_files_that_record_the_settings(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    assert work.record_passes() == set()
    for n, passes in ((0, "rl"), (1, "rl")):
        record = record_for(work, planned_unit(n), run.run_id)
        work.write_record(CompletionRecord(**{**record.__dict__, "passes": passes, "engine_base": None}))
    work.record_path(2).write_text("[]")  # not a record: left out
    assert work.record_passes() == {"rl"}
    assert [p.name for p, _ in work.recorded_settings()] == ["run.json", MARKER]  # no manifest yet
    work.write_manifest({"config": {"seq_len": 48}})
    path, data = next(work.recorded_settings())
    assert path == work.manifest_path and data["config"] == {"seq_len": 48}


def test_the_launchers_logs_are_named_here(tmp_path):
    work = WorkDir(tmp_path / "out")
    assert work.plan_log_path() == work.logs_dir / "plan.log"
    assert work.worker_log_path(3, tmp_path / "logs") == tmp_path / "logs" / "worker-3.log"


# -- base log-probs ---------------------------------------------------------------------------------------


def test_saved_base_logprobs_come_back_or_not_at_all(tmp_path):
    work = WorkDir(tmp_path / "out")
    claim(work, run_description())
    logp = np.random.default_rng(0).normal(-2.0, 1.0, 50).astype(np.float32)
    logp[0] = np.nan
    work.save_base(7, logp, json.dumps({"name": "hf", "dtype": "float32"}), "sha256:base")
    got, engine = work.load_base(7, 50, "sha256:base")
    assert np.array_equal(got, logp, equal_nan=True) and engine == {"name": "hf", "dtype": "float32"}
    assert sorted(p.name for p in work.base_dir.iterdir()) == ["unit-00007.npz"]  # no temporary file left
    assert work.load_base(7, 51, "sha256:base") is None  # not one value per token
    assert work.load_base(7, 50, "sha256:another-base") is None  # scored by another base model
    work.base_path(7).write_bytes(work.base_path(7).read_bytes()[:40])  # truncated by a crash
    assert work.load_base(7, 50, "sha256:base") is None
    assert work.load_base(8, 50, "sha256:base") is None  # never saved


# -- leftovers and cleanup --------------------------------------------------------------------------------


def test_sweeping_touches_only_the_given_units(tmp_path):
    work = WorkDir(tmp_path / "out")
    claim(work, run_description())
    mine = [temporary_path(work.shard_path(1)), temporary_path(work.record_path(1)), temporary_path(work.base_path(1))]
    mine += [work.output / "shard-00001.parquet.tmp", work.base_path(2)]  # a plain NAME.tmp; a done unit's base
    others = [temporary_path(work.shard_path(3)), work.base_path(1), work.base_path(3)]
    for p in mine + others:
        p.write_bytes(b"x")
    work.sweep_leftovers([1, 2], done={2})
    assert [p for p in mine if p.exists()] == []
    assert all(p.exists() for p in others)


@pytest.mark.parametrize("keep_work", [False, True])
def test_finish_removes_the_work_folder_or_only_orphans(tmp_path, keep_work):
    work = WorkDir(tmp_path / "out")
    claim(work, run_description())
    stray = temporary_path(work.manifest_path)
    for p in (stray, work.base_path(0), work.record_path(0)):
        p.write_bytes(b"x")
    work.finish(keep_work)
    assert not stray.exists() and not work.base_path(0).exists()
    assert work.record_path(0).exists() is keep_work and work.root.exists() is keep_work
    assert work.read_marker() is not None  # the folder stays remit's


# -- with real workers ------------------------------------------------------------------------------------


def test_leftovers_of_a_killed_worker_are_cleaned(planned, model_pair, corpus, tmp_path, spawner):
    """An orphan base file (killed after the record) and temporary files are removed on the rerun."""
    out = fresh_copy(planned, tmp_path / "out")
    kwargs = job(model_pair, corpus, out)
    p = start_worker(spawner, kwargs, failpoint="after-done:1")
    p.join()
    assert p.exitcode == -signal.SIGKILL
    assert (out / "_work" / "base" / "unit-00000.npz").exists()  # the orphan
    (out / "shard-00003.parquet.tmp").write_bytes(b"half a shard")
    (out / "_work" / "done" / "unit-00004.json.123-abcdef01.tmp").write_text("{")
    kwargs["keep_work"] = True
    run_worker(AnnotateConfig(**kwargs))
    assert not list(out.glob("*.tmp")) and not list((out / "_work").rglob("*.tmp"))
    assert not list((out / "_work" / "base").iterdir())


# -- confinement ------------------------------------------------------------------------------------------

_HOSTILE_NAMES = st.one_of(
    st.sampled_from(
        [
            "../shard-00001.parquet",
            "/etc/passwd",
            "shard-00001.parquet/../../x",
            "..",
            "",
            "shard-00002.parquet",
            "sub/shard-00001.parquet",
            "C:\\shard-00001.parquet",
            "shard-00001.parquet\0",
        ]
    ),
    st.text(alphabet="./\\shard-0123456789parquet\0~", max_size=40),
    st.integers(),
    st.none(),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_HOSTILE_NAMES, unit=st.one_of(st.just(1), st.integers(-3, 3), st.text(max_size=5), st.booleans()))
def test_a_record_or_plan_naming_anything_but_its_shard_is_refused(tmp_path_factory, name, unit):
    work = WorkDir(tmp_path_factory.mktemp("hostile") / "out")
    work.done_dir.mkdir(parents=True)
    run = run_description()
    planned = planned_unit(1)
    outside = work.output.parent / "shard-00001.parquet"
    outside.write_bytes(bytes(100))  # what a record leading out would find, at the recorded size
    on_disk = {**record_for(work, planned, run.run_id).to_dict(), "file": name, "unit": unit}
    work.record_path(1).write_text(json.dumps(on_disk))
    record, why = work.trusted_record(planned, run.run_id)
    if name != "shard-00001.parquet" or unit != 1 or isinstance(unit, bool):
        assert record is None and why and "\n" not in why
    plan = Plan(run.run_id, (planned_unit(0), planned_unit(1)), PlanTotals(2, 392, 8, 2, 49, {}, [], 0, []), 0.5)
    data = plan.to_dict()
    data["units"][1] = {**data["units"][1], "file": name, "unit": unit}
    work.plan_path.write_text(json.dumps(data))
    if name == "shard-00001.parquet" and unit == 1 and not isinstance(unit, bool):
        assert work.read_plan(run.run_id) == plan
        return
    with pytest.raises(ShardError) as e:
        work.read_plan(run.run_id)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{work.plan_path}: unreadable (entry 1 of units")
    assert "delete it and rerun" in message


@pytest.mark.parametrize("link", ["_work", "_work/done", "_work/done/unit-00001.json", "_work/plan/unit-00001.parquet"])
def test_a_symlink_in_the_work_folder_that_leads_out_is_refused(tmp_path, link):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    work.plan_dir.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = work.output / link
    if target.exists():
        (elsewhere / target.name).mkdir() if target.is_dir() else (elsewhere / target.name).write_text("{}")
        if target.is_dir():
            for p in target.iterdir():
                shutil.move(str(p), elsewhere / target.name / p.name)
            target.rmdir()
        else:
            target.unlink()
    else:
        (elsewhere / target.name).write_text("{}")
    target.symlink_to(elsewhere / target.name)
    planned = planned_unit(1)
    with pytest.raises(ShardError, match="leads outside the output folder") as e:
        if link.startswith("_work/plan/"):
            work.read_planned_unit(planned)
        elif link == "_work/done/unit-00001.json":
            work.trusted_record(planned, run.run_id)
        else:
            claim(WorkDir(work.output), run)
    assert "\n" not in str(e.value) and f"Fix: delete {target}" in str(e.value)
