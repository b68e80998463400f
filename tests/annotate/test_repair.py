"""The output folder is remit's or refused; a damaged finished output is repaired by the command every
message recommends; the failures a user can meet end in one line, never a traceback."""

from __future__ import annotations

import errno
import json
import re
import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from remit.annotate.cli import main
from remit.annotate.config import AnnotateConfig
from remit.annotate.job import run_job
from remit.annotate.workdir import MARKER
from remit.common import atomic
from remit.common.atomic import write_json_atomic
from remit.shards.checksum import file_sha256
from tests.altered import rerecord_shard
from tests.annotate.runs import assert_same_output, cli_flags, fresh_copy, job
from tests.shards.test_integrity import ALTERATIONS
from tests.shards.test_integrity import FILE as ALTERED_FILE


@pytest.fixture(scope="module")
def finished(tmp_path_factory, model_pair, corpus, planned, one_thread) -> Path:
    out = fresh_copy(planned, tmp_path_factory.mktemp("finished") / "out")
    assert run_job(AnnotateConfig(**job(model_pair, corpus, out)), 0, 1) == 0
    return out


def damaged_copy(finished: Path, dest: Path) -> Path:
    out = shutil.copytree(finished, dest)
    (out / "shard-00001.parquet").unlink()
    data = bytearray((out / "shard-00002.parquet").read_bytes())
    data[100] ^= 0xFF
    (out / "shard-00002.parquet").write_bytes(bytes(data))
    return out


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("remit-annotate")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_every_message_on_a_damaged_output_recommends_repair_and_repair_works(finished, reference, tmp_path, capsys):
    out = damaged_copy(finished, tmp_path / "out")
    repair = f"remit-annotate repair {out}"
    assert main(["finalize", str(out)]) != 0  # no manifest over a missing or damaged shard
    assert main(["validate", str(out)]) != 0
    assert main(["stats", str(out)]) != 0
    assert main(["show", str(out), "-o", str(tmp_path / "p.html")]) != 0
    err = capsys.readouterr().err
    assert err.count(repair) >= 4, err
    assert main(["repair", str(out), "--progress-every", "1000"]) == 0
    err = capsys.readouterr().err
    assert "unit 1: shard-00001.parquet is missing" in err and "unit 2: shard-00002.parquet differs" in err
    assert_same_output(out, reference)
    assert main(["validate", str(out)]) == 0


def test_a_rerun_of_the_original_command_repairs_too(finished, reference, model_pair, corpus, tmp_path, capsys):
    out = damaged_copy(finished, tmp_path / "out")
    assert main(cli_flags(model_pair, corpus, out)) == 0
    assert_same_output(out, reference)
    assert "scored" in capsys.readouterr().out


def test_a_folder_with_foreign_files_is_refused_untouched(model_pair, corpus, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    files = {"notes.txt": b"keep me", "shard-00000.parquet": b"not remit's", "x.tmp": b"t", "_work/a": b"w"}
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    assert main(cli_flags(model_pair, corpus, out)) != 0
    assert "remit did not create" in one_line(capsys.readouterr().err)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert not (out / MARKER).exists()


def test_an_input_inside_the_output_is_refused(model_pair, finished, tmp_path, capsys):
    out = shutil.copytree(finished, tmp_path / "out")
    inside = out / "docs.jsonl"
    inside.write_text('{"text": "x"}\n')
    assert main(cli_flags(model_pair, inside, out)) != 0
    assert "lies inside the output folder" in one_line(capsys.readouterr().err)


def test_a_full_disk_is_one_line_and_the_rerun_finishes(
    model_pair, corpus, planned, reference, tmp_path, monkeypatch, capsys
):
    out = fresh_copy(planned, tmp_path / "out")
    real = atomic.fsync_file
    calls = []

    def full(path):
        calls.append(path)
        if str(path).endswith(".tmp") and "shard-00002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path)

    monkeypatch.setattr(atomic, "fsync_file", full)
    assert main(cli_flags(model_pair, corpus, out)) == 1
    line = one_line(capsys.readouterr().err)
    assert "No space left on device" in line and "free disk space" in line and "shard-00002" in line
    assert not list(out.glob("*.tmp"))
    monkeypatch.setattr(atomic, "fsync_file", real)
    assert main(cli_flags(model_pair, corpus, out)) == 0
    assert_same_output(out, reference)


def test_a_read_only_output_is_one_line(model_pair, corpus, tmp_path, monkeypatch, capsys):
    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(atomic, "write_text_atomic", read_only)
    monkeypatch.setattr(atomic, "write_json_atomic", read_only)
    import remit.annotate.workdir as workdir

    monkeypatch.setattr(workdir, "write_json_atomic", read_only)
    assert main(cli_flags(model_pair, corpus, tmp_path / "out")) == 1
    assert "Read-only file system; the file system is read-only" in one_line(capsys.readouterr().err)


def test_show_into_a_folder_is_one_line(small_output, tmp_path, capsys):
    assert main(["show", str(small_output), "-o", str(tmp_path)]) != 0
    assert "is a folder" in one_line(capsys.readouterr().err)


def test_finalize_refuses_a_manifest_over_a_missing_shard(finished, tmp_path, capsys):
    out = shutil.copytree(finished, tmp_path / "out")
    (out / "shard-00000.parquet").unlink()
    before = (out / "manifest.json").read_bytes()
    assert main(["finalize", str(out)]) != 0
    assert "remit-annotate repair" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    assert json.loads(before)["totals"]["shards"] >= 3


def test_repair_prints_the_run_command_for_many_workers(finished, model_pair, capsys):
    assert main(["repair", str(finished), "--print"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith("remit-annotate run ") and f"--output {finished}" in command
    assert f"--rl {model_pair[1]}" in command and "--seq-len 48" in command


def test_repair_refuses_a_folder_that_is_not_an_output(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["repair", str(tmp_path)]) == 2
    assert "not an output of remit-annotate" in one_line(capsys.readouterr().err)


def _digests(out: Path) -> dict[str, str]:
    return {
        p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.name == "manifest.json" or p.suffix == ".parquet"
    }


@pytest.mark.parametrize("spelled", ["data/corpus.jsonl", "data"])
def test_repair_names_records_as_the_run_did_whatever_the_working_folder(
    model_pair, corpus, tmp_path, monkeypatch, one_thread, spelled
):
    first, other = tmp_path / "first", tmp_path / "other"
    (first / "data").mkdir(parents=True)
    other.mkdir()
    shutil.copy(corpus, first / "data" / "corpus.jsonl")
    (first / "data" / "notes.csv").write_text("not an input\n")  # listed in the manifest as not read
    out = tmp_path / "out"
    monkeypatch.chdir(first)
    flags = cli_flags(model_pair, Path(spelled), out)
    assert main(flags) == 0
    original = _digests(out)
    sources = set(pq.read_table(out / "shard-00000.parquet", columns=["source"]).column("source").to_pylist())
    assert sources == {"data/corpus.jsonl"}
    if spelled == "data":
        assert json.loads((out / "manifest.json").read_text())["input"]["ignored_examples"] == ["data/notes.csv"]
    (out / "shard-00001.parquet").unlink()
    monkeypatch.chdir(other)
    assert main(["repair", str(out), "--progress-every", "1000"]) == 0
    assert _digests(out) == original
    # The same input spelled otherwise, from another folder: the same run, named as it first was.
    damaged = bytearray((out / "shard-00002.parquet").read_bytes())
    damaged[100] ^= 0xFF
    (out / "shard-00002.parquet").write_bytes(bytes(damaged))
    assert main(cli_flags(model_pair, first / "data" / ".." / spelled, out)) == 0
    assert _digests(out) == original


def _suggested(err: str) -> list[str]:
    """The commands a message tells the user to run (`remit-annotate ...` in backquotes), without the program."""
    found = {c for c in re.findall(r"`(remit-annotate [^`]+)`", err)}
    return [shlex.split(c)[1:] for c in sorted(found)]


@pytest.mark.parametrize("rerecorded", [False, True], ids=["checksums-differ", "checksums-rerecorded"])
@pytest.mark.parametrize("alter", ALTERATIONS, ids=lambda a: a.__name__)
def test_every_suggestion_fixes_the_condition_it_reports(finished, reference, tmp_path, capsys, alter, rerecorded):
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    alter(out)
    if rerecorded:
        rerecord_shard(out, ALTERED_FILE)
    capsys.readouterr()
    for check in (["validate", str(out)], ["finalize", str(out)]):
        status = main(check)
        err = capsys.readouterr().err
        if status == 0:
            continue
        suggested = _suggested(err)
        assert suggested, err
        for argv in suggested:
            assert main([*argv, "--progress-every", "1000"] if argv[0] == "repair" else argv) == 0, argv
            capsys.readouterr()
        assert main(check) == 0, capsys.readouterr().err
    assert_same_output(out, reference)
    assert main(["validate", str(out)]) == 0


def test_repair_writes_again_a_manifest_inconsistent_with_its_shards(finished, reference, tmp_path, capsys):
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][2]["first_sample_id"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["validate", str(out)]) != 0
    suggested = _suggested(capsys.readouterr().err)
    assert suggested == [["repair", str(out)]], suggested
    assert main(["repair", str(out), "--progress-every", "1000"]) == 0
    assert_same_output(out, reference)
    assert main(["validate", str(out)]) == 0


@pytest.mark.parametrize(
    "target",
    [
        "_work/plan/unit-00001.parquet",
        "_work/plan.json",
        "shard-00002.parquet",
        "_work/done/unit-00001.json",
        "manifest.json",
    ],
)
def test_a_full_disk_names_the_file_being_written(model_pair, corpus, planned, tmp_path, monkeypatch, capsys, target):
    """A writer's error with no errno and no file name (as pyarrow raises it) still names the file."""
    out = tmp_path / "out"
    if not target.startswith("_work/plan"):
        fresh_copy(planned, out)
    real = atomic.fsync_file

    def full(path):
        if Path(path).name.startswith(Path(target).name + ".") and Path(path).parent == (out / target).parent:
            raise OSError("No space left on device")
        return real(path)

    monkeypatch.setattr(atomic, "fsync_file", full)
    assert main(cli_flags(model_pair, corpus, out)) == 1
    line = one_line(capsys.readouterr().err)
    assert f": {out / target}: No space left on device; free disk space" in line, line


def test_an_unreadable_manifest_is_kept_aside_by_repair_and_written_again(finished, reference, tmp_path, capsys):
    out = Path(shutil.copytree(finished, tmp_path / "out"))
    (out / "manifest.json").write_bytes(b'{"shards": [trunc')
    assert main(["validate", str(out)]) != 0
    assert _suggested(capsys.readouterr().err) == [["repair", str(out)]]
    assert main(cli_flags_of_repair(out)) == 0
    err = capsys.readouterr().err
    kept = out / "_work" / "manifest.json.unreadable"
    assert f"moved to {kept} (kept)" in err and kept.read_bytes() == b'{"shards": [trunc'
    assert main(["validate", str(out)]) == 0
    assert {n: (out / n).read_bytes() for n in reference} == reference


def cli_flags_of_repair(out: Path) -> list[str]:
    return ["repair", str(out), "--progress-every", "1000"]


def test_an_output_that_does_not_record_its_spelling_is_repaired_with_the_names_its_shards_show(
    model_pair, corpus, tmp_path, monkeypatch, one_thread
):
    """An output written before runs recorded how their inputs were spelled: its manifest holds only the
    resolved paths, its shards the relative spelling."""
    first, other = tmp_path / "first", tmp_path / "other"
    (first / "data").mkdir(parents=True)
    other.mkdir()
    shutil.copy(corpus, first / "data" / "corpus.jsonl")
    out = tmp_path / "out"
    monkeypatch.chdir(first)
    assert main(cli_flags(model_pair, Path("data/corpus.jsonl"), out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["input"]["paths"]:
        assert entry.pop("given") == "data/corpus.jsonl"
    write_json_atomic(out / "manifest.json", manifest)
    original = _digests(out)
    (out / "shard-00001.parquet").unlink()
    monkeypatch.chdir(other)
    assert main(["repair", str(out), "--progress-every", "1000"]) == 0
    assert _digests(out) == original
