"""Checkpoint pickles go through the allow-list: planted payloads in `.metadata`, a `.distcp` item and
`common.pt` are refused in one line and never run, both by the check before a load and inside torch's
own reader. The checkpoints are torch DCP folders written here (the Megatron ones: test_resume_rules)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from remit.train.safe_load import UnsafeCheckpointError, check_pickles, restricted_loading

# torch's DCP warns that it runs in a single process: these folders are written and read without groups.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


#: How pickle names the builtin `open` (io.open up to Python 3.11, _io.open from 3.12).
OPEN = f"{open.__module__}.open"


class Planted:
    """Unpickling this object creates `marker`: what a planted pickle can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _checkpoint(folder: Path, extra: object = None) -> Path:
    """A DCP folder like remit's: tensors, and plain state as non-tensor items of the .distcp file."""
    state = {"weight": torch.arange(6.0).reshape(2, 3), "train_state": {"iteration": 3, "lr": [1e-3, 0.5]}}
    if extra is not None:
        state["extra"] = extra
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_a_checkpoint_of_tensors_and_plain_state_passes(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    torch.save({"scheduler": {"num_steps": 12}, "w": torch.ones(2)}, folder / "common.pt")
    assert {"weight", "train_state.iteration", "train_state.lr"} <= check_pickles(folder)


def test_a_planted_metadata_is_refused_and_never_run(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "code-ran"
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(UnsafeCheckpointError) as e:
        check_pickles(folder)
    msg = _one_line(e)
    assert msg.startswith(f"{folder / '.metadata'}: holds a pickled reference to {OPEN}"), msg
    assert "--trust-checkpoint" in msg
    assert not marker.exists()


def test_a_planted_distcp_item_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code-ran"
    folder = _checkpoint(tmp_path / "ckpt", extra=Planted(marker))  # torch.save'd as the item, not run
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as e:
        check_pickles(folder)
    msg = _one_line(e)
    assert f".distcp (item extra): holds a pickled reference to {OPEN}" in msg, msg
    assert not marker.exists()


def test_a_planted_common_pt_is_refused_and_never_run(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "code-ran"
    torch.save({"train_state": Planted(marker)}, folder / "common.pt")
    with pytest.raises(UnsafeCheckpointError) as e:
        check_pickles(folder)
    assert _one_line(e).startswith(f"{folder / 'common.pt'}: holds a pickled reference to {OPEN}")
    assert not marker.exists()


def test_an_item_that_points_outside_the_folder_is_refused(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    with (folder / ".metadata").open("rb") as f:
        metadata = pickle.load(f)
    for info in metadata.storage_data.values():
        info.relative_path = "../elsewhere.distcp"
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError, match="points outside the checkpoint"):
        check_pickles(folder)


def test_a_missing_or_garbled_index_is_one_line(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    (folder / ".metadata").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UnsafeCheckpointError) as e:
        check_pickles(folder)
    assert "not a readable checkpoint index" in _one_line(e)
    (folder / ".metadata").unlink()
    with pytest.raises(UnsafeCheckpointError, match="missing"):
        check_pickles(folder)


# --- inside torch's reader: a file replaced after the check -------------------------------------------


def test_torch_reads_the_index_through_the_allow_list(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "code-ran"
    (folder / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(CheckpointException), restricted_loading() as refusals:
        dcp.load({"weight": torch.zeros(2, 3)}, checkpoint_id=str(folder), no_dist=True)
    assert str(refusals[0]).startswith(f"{folder / '.metadata'}: holds a pickled reference to {OPEN}")
    assert not marker.exists()


def test_torch_reads_the_items_weights_only(tmp_path):
    marker = tmp_path / "code-ran"
    folder = _checkpoint(tmp_path / "ckpt", extra=Planted(marker))
    # torch's planner reads non-tensor items with weights_only=False; under the context it may not
    with pytest.raises(CheckpointException), restricted_loading() as refusals:
        dcp.load({"extra": io.BytesIO()}, checkpoint_id=str(folder), no_dist=True)
    assert f"holds a pickled reference to {OPEN}" in str(refusals[0])
    assert not marker.exists()
    # plain state still loads under the context, and the process is left as it was
    state = {"weight": torch.zeros(2, 3), "train_state": {"iteration": 0, "lr": None}}
    with restricted_loading():
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    assert state["train_state"] == {"iteration": 3, "lr": [1e-3, 0.5]}
    assert torch.equal(state["weight"], torch.arange(6.0).reshape(2, 3))
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ and torch.load.__name__ == "load"
    from torch.distributed.checkpoint import filesystem

    assert filesystem.pickle is pickle


# --- Megatron-Core's reader, past the check ---------------------------------------------------------------


@pytest.mark.megatron
def test_megatron_reads_the_common_state_through_the_allow_list(mcore, baseline, tmp_path):
    import shutil

    from remit.train.checkpoint import iteration_dir, read_common_state

    run = Path(shutil.copytree(baseline / "run", tmp_path / "run"))
    folder, marker = iteration_dir(run, 6), tmp_path / "code-ran"
    # where this release keeps the common state: common.pt (0.16.1 to 0.18) or the .distcp files (0.19)
    if (folder / "common.pt").exists():
        planted = folder / "common.pt"
        torch.save({"train_state": Planted(marker)}, planted)
    else:
        planted = folder / ".metadata"
        planted.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(UnsafeCheckpointError) as e:
        read_common_state(run, 6)
    assert _one_line(e).startswith(f"{planted}: holds a pickled reference to {OPEN}"), e.value
    assert not marker.exists()
