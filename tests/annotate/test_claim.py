"""Claiming an output folder: ownership, one run per folder, accepted model changes, reopening a finished
output, and the race between workers that claim at the same moment.

The unit tests use hand-made outputs (no model); one test runs real workers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from remit.annotate.claim import Reopened, check_shards, claim, claim_folder, differences
from remit.annotate.config import AnnotateConfig
from remit.annotate.records import CompletionRecord, Plan, PlanTotals, RunDescription
from remit.annotate.workdir import MARKER, WorkDir, shard_name
from remit.annotate.worker import run_worker
from remit.shards.checksum import file_sha256
from remit.shards.manifest import ShardError
from tests.annotate.runs import SEQ_LEN, assert_same_output, fresh_copy, job
from tests.annotate.test_workdir import planned_unit, record_for, run_description


def finished(work: WorkDir, run: RunDescription, units: int = 3, passes: str = "both") -> list[dict]:
    """A hand-made finished output of `run`: `units` shards of random bytes and their manifest."""
    rng = np.random.default_rng(len(work.output.name))
    entries = []
    for n in range(units):
        work.shard_path(n).write_bytes(rng.bytes(100 + n))
        entries.append(
            {
                "file": shard_name(n),
                "rows": 4,
                "tokens": 196,
                "first_sample_id": 4 * n,
                "token_checksum": f"blake2b128:{n}",
                "column_checksums": {"token_ids": f"blake2b128:{n}"},
                "file_sha256": file_sha256(work.shard_path(n)),
                "bytes": 100 + n,
            }
        )
    manifest = {
        "format": "remit-shards",
        "run_id": run.run_id,
        **{k: v for k, v in run.to_dict().items() if k not in ("run_id", "engine_request")},
        "engine": {"name": "hf"},
        "passes": passes,
        "shards": entries,
    }
    work.manifest_path.write_text(json.dumps(manifest))
    return entries


# -- one run per folder ----------------------------------------------------------------------------------


def test_a_folder_is_claimed_by_one_run(tmp_path):
    work = WorkDir(tmp_path / "out")
    run, other = run_description(), run_description(1)
    assert claim(work, run).complete is False
    assert work.read_run() == run
    assert claim(work, run).complete is False  # the same run again: fine
    with pytest.raises(ShardError, match=r"unfinished work of a different run.* config\.seq_len: 48 -> 49"):
        claim(work, other)
    shutil.rmtree(work.root)
    finished(work, run)
    assert claim(work, run).complete is True  # complete
    with pytest.raises(ShardError, match="holds the finished output of a different run"):
        claim(work, other)


# -- ownership --------------------------------------------------------------------------------------------


def test_an_empty_or_new_folder_becomes_remits_and_a_foreign_one_is_refused_untouched(tmp_path):
    new = WorkDir(tmp_path / "new" / "out")
    claim_folder(new)
    assert new.read_marker()["created_by"] == "remit-annotate" and new.owned()
    (tmp_path / "empty").mkdir()
    claim_folder(WorkDir(tmp_path / "empty"))
    assert WorkDir(tmp_path / "empty").owned()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    files = {
        "notes.txt": b"my notes",
        "a.tmp": b"my temporary file",
        "shard-00000.parquet": b"my own parquet",
        "_work/keep.bin": b"x",
    }
    for name, data in files.items():
        (foreign / name).parent.mkdir(parents=True, exist_ok=True)
        (foreign / name).write_bytes(data)
    with pytest.raises(ShardError, match=r"holds files remit did not create \(_work/, a\.tmp, notes\.txt"):
        claim(WorkDir(foreign), run_description())
    assert sorted(str(p.relative_to(foreign)) for p in foreign.rglob("*") if p.is_file()) == sorted(files)
    assert all((foreign / n).read_bytes() == d for n, d in files.items())
    (foreign / MARKER).write_text("{}")  # a file of that name that is not remit's marker
    with pytest.raises(ShardError, match="not remit's ownership marker"):
        claim_folder(WorkDir(foreign))


@pytest.mark.parametrize("moment", ["before-listing", "after-marker-read"])
def test_a_worker_claiming_the_folder_between_our_reads_is_not_mistaken_for_a_stranger(tmp_path, monkeypatch, moment):
    """Two workers start together on an empty folder. The other one claims it (marker, then run.json and
    _work/) while this one is between its reads: just before it lists the folder, or just after it first
    reads the (still missing) marker. Either way both hold the folder and nothing is refused."""
    out = tmp_path / "out"
    out.mkdir()
    run = run_description()
    other_went = []

    def other_worker_claims() -> None:
        if not other_went:
            other_went.append(True)
            claim(WorkDir(out), run)

    if moment == "before-listing":
        original = WorkDir.foreign_entries

        def listing(self):
            other_worker_claims()
            return original(self)

        monkeypatch.setattr(WorkDir, "foreign_entries", listing)
    else:
        original_read = WorkDir.read_marker

        def read(self):
            found = original_read(self)
            if found is None:
                other_worker_claims()
            return found

        monkeypatch.setattr(WorkDir, "read_marker", read)
    assert claim(WorkDir(out), run).complete is False
    monkeypatch.undo()
    assert other_went and WorkDir(out).read_run() == run and WorkDir(out).read_marker()["run_id"] == run.run_id


def test_an_output_of_a_remit_without_markers_is_adopted(tmp_path):
    work = WorkDir(tmp_path / "out")
    work.output.mkdir()
    run = run_description()
    finished(work, run)
    assert work.owned() and work.read_marker() is None
    assert claim(work, run).complete is True
    assert work.read_marker() is not None


# -- a finished output reopened ----------------------------------------------------------------------------


def test_a_finished_output_with_a_missing_or_damaged_shard_is_reopened(tmp_path, capsys):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim_folder(work)
    entries = finished(work, run, units=4)
    work.shard_path(1).unlink()
    data = bytearray(work.shard_path(2).read_bytes())
    data[7] ^= 1  # same size, other content: only the hash notices
    work.shard_path(2).write_bytes(bytes(data))
    assert check_shards(work, entries) == {
        1: "shard-00001.parquet is missing",
        2: "shard-00002.parquet differs from what was written (sha256 mismatch)",
    }
    got = claim(work, run)
    assert not got.complete and got.reopened is not None and sorted(got.reopened.damaged) == [1, 2]
    assert not work.manifest_path.exists() and work.read_run() == run
    # The intact shards are complete units again; the damaged ones have no record and are scored again.
    assert sorted(p.name for p in work.done_dir.iterdir()) == ["unit-00000.json", "unit-00003.json"]
    record = CompletionRecord.from_dict(json.loads(work.record_path(3).read_text()))
    assert record.shard.to_dict() == entries[3] and record.passes == "both"
    err = capsys.readouterr().err
    assert "repair: 2 units missing or damaged" in err and "unit 1: shard-00001.parquet is missing" in err


def test_an_rl_only_output_is_reopened_for_its_base_pass(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim_folder(work)
    finished(work, run, units=2, passes="rl")
    assert claim(work, run, "rl").complete is True  # it holds what is asked
    got = claim(work, run, "both")
    assert not got.complete and got.reopened == Reopened(damaged={}, base_pass=True)
    record = CompletionRecord.from_dict(json.loads(work.record_path(1).read_text()))
    assert record.passes == "rl" and record.engine_base is None


def test_a_model_nothing_was_scored_with_may_change(tmp_path):
    work = WorkDir(tmp_path / "out")
    parts: dict[str, Any] = {k: {} for k in ("tokenizer", "packing", "weights", "engine_request", "input")}

    def run_with(rl_hash: str, base_hash: str = "sha256:b") -> RunDescription:
        models = {"base": {"weights_sha256": base_hash}, "rl": {"weights_sha256": rl_hash}}
        return RunDescription.create(remit_version="test", config={"seq_len": 48}, models=models, **parts)

    broken, repaired = run_with("sha256:broken"), run_with("sha256:repaired")
    claim(work, broken)
    work.write_plan(Plan(broken.run_id, (planned_unit(0),), PlanTotals(1, 196, 4, 1, 49, {}, [], 0, []), 0.1))
    work.save_base(0, np.zeros(196, np.float32), json.dumps({"name": "hf"}), "sha256:b")
    # Only the base pass ran with the broken RL model: the repaired one continues this run, base pass kept.
    assert claim(work, repaired).complete is False
    assert work.read_run() == repaired and work.read_plan(repaired.run_id).run_id == repaired.run_id
    assert work.load_base(0, 196, "sha256:b") is not None
    # A changed base model would lose that base pass: refused, naming the change.
    with pytest.raises(ShardError, match=r"models\.base\.weights_sha256: \"sha256:b\" -> \"sha256:c\""):
        claim(work, run_with("sha256:repaired", "sha256:c"))
    # Once a unit is finished with the RL model, changing it is refused too.
    unit = planned_unit(0)
    work.write_record(record_for(work, unit, repaired.run_id))
    with pytest.raises(ShardError, match=r"models\.rl\.weights_sha256"):
        claim(work, run_with("sha256:other"))


def test_differences_name_the_settings():
    assert differences({"a": {"b": 1, "c": [1]}, "d": "x"}, {"a": {"b": 2, "c": [1]}, "e": "y"}) == [
        "a.b: 1 -> 2",
        'd: "x" -> null',
        'e: null -> "y"',
    ]


# -- with real workers ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
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


def test_a_manifest_entry_without_column_checksums_counts_as_damaged(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim(work, run)
    entries = finished(work, run)
    del entries[1]["column_checksums"]  # an entry of format version 1
    assert check_shards(work, entries) == {1: "its manifest entry lacks column_checksums"}


def _forged_marker(tmp_path: Path) -> bytes:
    """A marker as remit writes it, naming a run: what someone copies into a folder of their own."""
    source = WorkDir(tmp_path / "source")
    claim(source, run_description())
    return source.marker_path.read_bytes()


@pytest.mark.parametrize(
    "files",
    [
        {"manifest.json": b'{"name": "my project", "version": 3}\n'},
        {"manifest.json": b"not json at all"},
        {"notes.txt": b"keep me"},
        {"shard-00000.parquet": b"mine", "data/": None},
    ],
    ids=["their-manifest", "unreadable-manifest", "their-notes", "their-folder"],
)
def test_a_planted_marker_makes_remit_refuse_and_touch_nothing(tmp_path, files):
    folder = tmp_path / "theirs"
    folder.mkdir()
    for name, data in files.items():
        if data is None:
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(data)
    (folder / MARKER).write_bytes(_forged_marker(tmp_path))
    before = {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}
    with pytest.raises(ShardError, match="nothing was touched") as e:
        claim(WorkDir(folder), run_description(1))
    assert "\n" not in str(e.value)
    assert {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")} == before


def test_a_marker_naming_another_run_than_the_manifest_is_refused(tmp_path):
    work = WorkDir(tmp_path / "out")
    run = run_description()
    claim_folder(work)
    finished(work, run, units=2)
    manifest = json.loads(work.manifest_path.read_text())
    work.write_marker(run_description(1))
    with pytest.raises(ShardError, match=f"of run {manifest['run_id']}, but {MARKER} names run"):
        claim(WorkDir(work.output), run)
    assert json.loads(work.manifest_path.read_text()) == manifest


@pytest.mark.parametrize(
    "resolved, names, spelled",
    [
        ("/home/me/data/c.jsonl", {"data/c.jsonl"}, "data/c.jsonl"),
        ("/home/me/data/c.jsonl", {"c.jsonl", "data/c.jsonl"}, "data/c.jsonl"),  # the longest match
        ("/home/me/data", {"data/a.jsonl", "data/sub/b.jsonl"}, "data"),
        ("/home/me/data", {"../me/data/a.jsonl"}, "../me/data"),
        ("/home/me/ds", {"ds[train]"}, "ds"),
        ("/home/me/data/c.jsonl", {"/home/me/data/c.jsonl"}, None),  # named by the resolved path
        ("/home/me/data/c.jsonl", {"other/x.jsonl"}, None),
    ],
)
def test_the_spelling_of_an_input_is_read_back_from_source_names(resolved, names, spelled):
    from remit.annotate.claim import _spelling_in

    assert _spelling_in(resolved, names) == spelled
