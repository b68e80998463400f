"""The one atomic writer: complete files or none, one temporary-name scheme, file and folder flushed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from remit.common import atomic
from remit.common.atomic import atomic_path, leftovers, temporary_path, write_json_atomic, write_text_atomic


def test_json_is_written_sorted_indented_with_a_final_newline(tmp_path):
    path = tmp_path / "run.json"
    obj = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}
    write_json_atomic(path, obj)
    assert path.read_bytes() == (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("ascii")
    assert json.loads(path.read_text()) == obj
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_text_replaces_an_existing_file_whole(tmp_path):
    path = tmp_path / "latest"
    path.write_text("old content that is longer than the new one\n")
    write_text_atomic(path, "7\n")
    assert path.read_text() == "7\n"
    assert leftovers(path) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "shard-00000.parquet"
    path.write_bytes(b"the complete old shard")
    with pytest.raises(RuntimeError, match="read-back failed"), atomic_path(path) as tmp:
        tmp.write_bytes(b"half a sha")
        raise RuntimeError("read-back failed")
    assert path.read_bytes() == b"the complete old shard"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.parquet"]


def test_the_file_is_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    path = tmp_path / "plan.json"
    write_json_atomic(path, {"units": []})
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and Path(events[0][1]).parent == tmp_path
    assert events[1][1] == str(path)
    assert events[2][1] == str(tmp_path)


def test_temporary_names_are_unique_and_found_as_leftovers(tmp_path):
    path = tmp_path / "unit-00003.npz"
    names = {temporary_path(path).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(f"unit-00003.npz.{os.getpid()}-") and n.endswith(".tmp") for n in names)
    stale = [temporary_path(path), tmp_path / "unit-00003.npz.tmp"]  # this scheme and the plain one
    others = [path, tmp_path / "unit-00030.npz.1-abcdef01.tmp", tmp_path / "unit-00003.json.1-abcdef01.tmp"]
    for p in stale + others:
        p.write_bytes(b"x")
    assert leftovers(path) == sorted(stale)


def test_two_writers_of_one_file_each_install_a_complete_file(tmp_path):
    path = tmp_path / "run.json"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        first.write_text('{"writer": 1}\n')
        second.write_text('{"writer": 2}\n')
    # The outer context exits last, so the first writer's file is the one in place; both were complete.
    assert json.loads(path.read_text()) == {"writer": 1}
    assert leftovers(path) == []
