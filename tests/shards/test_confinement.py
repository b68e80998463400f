"""Every shard path read from an output's manifest stays inside the output folder.

A manifest entry that names a path outside the folder (``..``, an absolute path, a subfolder, a
symlink leading out) is refused in one line by every reader: `read_manifest`, `open_output`, validate,
the views (stats, show), verify and the trainer's dataset.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PureWindowsPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.shards import ShardError, open_output, read_manifest
from remit.shards.manifest import confined
from remit.shards.synthetic import make_output
from remit.shards.validate import validate_output
from remit.shards.views import check_output
from remit.shards.views import main as views_main

SHARD = "shard-00000.parquet"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    return make_output(tmp_path_factory.mktemp("confine") / "clean", n_docs=12, seq_len=32, rows_per_shard=4, seed=1)


@pytest.fixture
def out(clean, tmp_path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "out"))


def set_entry(root: Path, index: int, name: object) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data["shards"][index]["file"] = name
    path.write_text(json.dumps(data))


def readers_refuse(root: Path, needle: str) -> None:
    """Every reader refuses the output in one line that names the manifest and the fix."""
    for read in (read_manifest, open_output, check_output, lambda r: check_output(r, verify=True)):
        with pytest.raises(ShardError) as e:
            read(root)
        message = str(e.value)
        assert "\n" not in message
        assert "manifest.json" in message and needle in message and "remit-annotate repair" in message
    problems = validate_output(root)
    assert len(problems) == 1 and needle in str(problems[0])


def test_parent_path_that_exists_is_refused_everywhere(out, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(out / SHARD), elsewhere / SHARD)
    set_entry(out, 0, f"../elsewhere/{SHARD}")
    readers_refuse(out, "../elsewhere")
    assert views_main([str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard entry 0" in err


def test_the_commands_refuse_it_in_one_line(out, tmp_path, capsys):
    pytest.importorskip("duckdb")
    from remit.annotate.cli import main
    from remit.annotate.verify import main as verify_main

    moved = tmp_path / SHARD
    shutil.move(str(out / SHARD), moved)
    set_entry(out, 0, str(moved))
    page = tmp_path / "page.html"
    for argv in (["validate", str(out)], ["stats", str(out)], ["show", str(out), "-o", str(page)]):
        assert main(argv) != 0, argv
        err = capsys.readouterr().err
        assert "shard entry 0" in err and str(moved) in err, argv
    assert verify_main([str(out)]) == 2
    assert "shard entry 0" in capsys.readouterr().err
    assert not page.exists()


def test_absolute_path_is_refused_everywhere(out, tmp_path):
    moved = tmp_path / SHARD
    shutil.move(str(out / SHARD), moved)
    set_entry(out, 0, str(moved))
    readers_refuse(out, str(moved))


def test_symlink_leading_out_is_refused(out, tmp_path):
    moved = tmp_path / "outside.parquet"
    shutil.move(str(out / SHARD), moved)
    (out / SHARD).symlink_to(moved)
    readers_refuse(out, "a symlink to")


def test_symlink_inside_the_folder_and_a_symlinked_folder_are_read(out, tmp_path):
    (out / "kept").mkdir()
    shutil.move(str(out / SHARD), out / "kept" / SHARD)
    (out / SHARD).symlink_to(Path("kept") / SHARD)
    link = tmp_path / "link"
    link.symlink_to(out)
    output = open_output(link)
    output.verify()
    assert output.path(0) == link / SHARD
    assert validate_output(link) == []


def test_output_path_rechecks_at_read_time(out, tmp_path):
    output = open_output(out)
    moved = tmp_path / "later.parquet"
    shutil.move(str(out / SHARD), moved)
    (out / SHARD).symlink_to(moved)  # swapped after the manifest was read
    with pytest.raises(ShardError, match="outside the output folder"):
        output.read(0)


def test_trainer_dataset_refuses(out):
    pytest.importorskip("torch")
    from remit.train.dataset import RemitDataset

    set_entry(out, 1, "../shard-00001.parquet")
    with pytest.raises(ShardError, match="shard entry 1"):
        RemitDataset(out)


HOSTILE = st.one_of(
    st.builds(lambda a, b: f"{a}/{b}", st.sampled_from(["..", "../..", "", "sub", "."]), st.text(min_size=1)),
    st.builds(lambda a: f"/{a}", st.text()),
    st.builds(lambda a, b: f"{a}\\{b}", st.text(), st.text()),
    st.builds(lambda a, b: f"{a}\0{b}", st.text(), st.text()),
    st.builds(lambda d, a: f"{d}:{a}", st.sampled_from("CcZz"), st.text()),
    st.sampled_from(["", ".", "..", None, 0, 1.5, [], {}, ["shard-00000.parquet"], True]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=HOSTILE)
def test_hostile_entries_are_refused_before_any_read(out, name):
    set_entry(out, 1, name)
    with pytest.raises(ShardError) as e:
        read_manifest(out)
    assert "shard entry 1" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ShardError):
        confined(out, name)
    [problem] = validate_output(out)
    assert "shard entry 1" in str(problem)


@settings(max_examples=40, deadline=None)
@given(name=st.text(min_size=1).filter(lambda s: "/" not in s and "\\" not in s and "\0" not in s))
def test_plain_names_stay_inside(tmp_path_factory, name):
    root = tmp_path_factory.getbasetemp() / "plain"
    if name in (".", "..") or PureWindowsPath(name).drive:
        with pytest.raises(ShardError):
            confined(root, name)
        return
    assert confined(root, name).parent == root
