"""Input discovery is total: every entry under an input folder is read or listed as not read, with why.

- symlinked folders are followed, each real folder once (a loop is listed, not walked forever);
- broken symlinks, pipes and unreadable folders are listed with their reason;
- a DatasetDict folder: its one split is read and named; with several, only those given by --split;
- the error for inputs without a usable document names a damaged file, and a bad id column points at
  --id-field, not --text-field.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remit.annotate.cli import main
from remit.annotate.inputs import (
    Fields,
    InputError,
    Record,
    Skip,
    fingerprint,
    no_usable_documents,
    read_inputs,
    scan_inputs,
)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_every_entry_is_read_or_listed_with_its_reason(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", ["one"])
    (corpus / "weights.bin").write_bytes(b"\0")
    (corpus / "gone.jsonl").symlink_to(tmp_path / "missing.jsonl")
    os.mkfifo(corpus / "pipe.jsonl")
    elsewhere = write_jsonl(tmp_path / "elsewhere" / "b.jsonl", ["two"]).parent
    (corpus / "linked").symlink_to(elsewhere)
    (corpus / "linked-again").symlink_to(elsewhere)
    (corpus / "sub").mkdir()
    (corpus / "sub" / "loop").symlink_to(corpus)
    scan = scan_inputs([corpus])
    assert scan.sources == [corpus / "a.jsonl", corpus / "linked" / "b.jsonl"]
    reasons = {p.relative_to(corpus).as_posix(): scan.not_read(p) for p in scan.ignored}
    assert set(reasons) == {"weights.bin", "gone.jsonl", "pipe.jsonl", "linked-again", "sub/loop"}
    assert reasons["weights.bin"] == str(corpus / "weights.bin")  # no input type: the path alone
    assert "broken symlink" in reasons["gone.jsonl"]
    assert "not a regular file" in reasons["pipe.jsonl"]
    assert "the same folder as" in reasons["linked-again"] and "linked" in reasons["linked-again"]
    assert f"the same folder as {corpus}" in reasons["sub/loop"]
    assert [r.text for r in read_inputs(scan.sources, Fields()) if isinstance(r, Record)] == ["one", "two"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_folder_is_listed(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", ["one"])
    (corpus / "locked").mkdir()
    (corpus / "locked").chmod(0)
    try:
        scan = scan_inputs([corpus])
    finally:
        (corpus / "locked").chmod(0o755)
    assert "folder cannot be read" in scan.not_read(corpus / "locked")


NAMES = st.text(alphabet="abcxyz", min_size=1, max_size=4)
SUFFIXES = st.sampled_from([".jsonl", ".txt", ".md", ".jsonl.gz", ".csv", ".bin", "", ".parquet.tmp", ".json"])
TREES = st.lists(st.tuples(st.lists(NAMES, max_size=2), NAMES, SUFFIXES), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(tree=TREES, links=st.lists(st.tuples(st.lists(NAMES, max_size=2), NAMES, st.integers(0, 3)), max_size=3))
def test_discovery_is_total(tree, links):
    """Whatever the tree (folders, files of any suffix, symlinks to folders above or beside), every file
    reached by a walk is either a source or listed as not read, and nothing is listed twice."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        write_jsonl(corpus / "seed.jsonl", ["x"])
        for folders, name, suffix in tree:
            path = corpus.joinpath(*folders, name + suffix)
            if path.exists() or any(p.exists() and not p.is_dir() for p in path.parents):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n")
        for folders, name, up in links:
            where = corpus.joinpath(*folders)
            if not where.is_dir() or (where / name).exists() or (where / name).is_symlink():
                continue
            target = where
            for _ in range(up):
                target = target.parent if target != corpus else target
            (where / name).symlink_to(target)
        scan = scan_inputs([corpus])
        listed = scan.sources + scan.ignored
        assert len(listed) == len(set(listed))
        # Every file a plain walk reaches without following links is either listed or below a listed folder.
        for root, dirs, files in os.walk(corpus):
            for entry in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
                p = Path(root) / entry
                assert p in listed or any(q in listed for q in p.parents) or (p.is_symlink() and p.is_dir()), p


# ----------------------------------------------------------------------------------------------------
# DatasetDict folders


@pytest.fixture
def dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")

    def make(splits: dict[str, list[str]]) -> Path:
        path = tmp_path / f"dd-{'-'.join(splits)}"
        datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": v}) for k, v in splits.items()}).save_to_disk(
            str(path)
        )
        return path

    return make


def test_a_datasetdict_with_one_split_is_read_and_named(dataset_dict):
    path = dataset_dict({"train": ["a", "b"]})
    scan = scan_inputs([path])
    assert scan.sources == [path / "train"] and scan.splits == {path: ["train"]}
    records = list(read_inputs(scan.sources, Fields()))
    assert [r.source for r in records] == [f"{path}[train]"] * 2
    assert [r.doc_id for r in records] == [f"{path}[train]:0", f"{path}[train]:1"]
    assert fingerprint(scan)[0]["splits"] == {".": ["train"]}


def test_several_splits_need_split(dataset_dict, tmp_path):
    path = dataset_dict({"train": ["a", "b"], "test": ["c"]})
    with pytest.raises(InputError, match=r"2 splits \(train, test\); name the ones to read with --split"):
        scan_inputs([path])
    scan = scan_inputs([path], ["test"])
    assert scan.sources == [path / "test"] and scan.splits == {path: ["test"]}
    assert "not chosen with --split" in scan.not_read(path / "train")
    assert [r.text for r in read_inputs(scan.sources, Fields())] == ["c"]
    with pytest.raises(InputError, match="none of the splits given by --split .validation.; its splits: train, test"):
        scan_inputs([path], ["validation"])
    # Inside a folder too.
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copytree(path, folder / "dd")
    write_jsonl(folder / "x.jsonl", ["x"])
    assert scan_inputs([folder], ["train", "test"]).sources == [
        folder / "dd" / "test",
        folder / "dd" / "train",
        folder / "x.jsonl",
    ]


def test_split_flag_reaches_the_scan(dataset_dict, model_pair, tmp_path, capsys):
    path = dataset_dict({"train": ["a b c", "d e f"], "test": ["g h i"]})
    base, rl = model_pair
    argv = ["plan", "--base", str(base), "--rl", str(rl), "--input", str(path), "--seq-len", "8", "--engine", "hf"]
    assert main([*argv, "--output", str(tmp_path / "o1")]) == 2
    assert "name the ones to read with --split" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "o2"), "--split", "test", "--split", "validation"]) == 0
    work = tmp_path / "o2" / "_work"
    run = json.loads((work / "run.json").read_text())
    assert run["config"]["split"] == ["test", "validation"]
    assert run["input"]["paths"][0]["splits"] == {".": ["test"]}
    totals = json.loads((work / "plan.json").read_text())["totals"]
    assert totals["documents"] == 1 and totals["ignored_files"] == 1
    assert totals["ignored_examples"] == [
        f"{path / 'train'}: split 'train' of the DatasetDict {path}, not chosen with --split"
    ]


# ----------------------------------------------------------------------------------------------------
# No usable documents


def test_a_single_corrupt_file_is_named(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.writelines(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(50))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    p.write_bytes(bytes(data))
    skips = [s for s in read_inputs([p], Fields()) if isinstance(s, Skip)]
    kinds: dict[str, int] = {}
    for s in skips:
        kinds[s.kind] = kinds.get(s.kind, 0) + s.records
    message = no_usable_documents(kinds, [f"{s.where()}: {s.reason}" for s in skips])
    assert str(p) in message and "re-create the damaged file" in message
    assert "--text-field" not in message


def test_a_bad_id_column_points_at_id_field(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "id": [1.5, 2.5]}), p)
    skips = [s for s in read_inputs([p], Fields()) if isinstance(s, Skip)]
    assert {s.kind for s in skips} == {"bad id"}
    message = no_usable_documents({"bad id": 2}, [f"{s.where()}: {s.reason}" for s in skips])
    assert "--id-field" in message and "--text-field" not in message and str(p) in message


def test_a_missing_text_field_still_points_at_text_field():
    message = no_usable_documents({"missing field": 3}, ["f.jsonl record 0: field 'text' missing"])
    assert "--text-field" in message and "--id-field" not in message


def test_the_pack_command_names_the_corrupt_file(model_pair, tmp_path, capsys):
    p = tmp_path / "only.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.writelines(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(50))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data[len(data) // 2 + 1] ^= 0xFF
    p.write_bytes(bytes(data))
    base, _ = model_pair
    argv = ["pack", "--tokenizer", str(base), "--input", str(p), "--output", str(tmp_path / "o"), "--seq-len", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "--text-field" not in err
