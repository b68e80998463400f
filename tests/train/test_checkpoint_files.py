"""Which rank hashes which checkpoint file, and --keep-last (no Megatron needed)."""

from __future__ import annotations

from pathlib import Path

from remit.train.checkpoint import HASH_FILE, _own_files, iteration_dir, remove_older
from remit.train.config import TRACKER_FILE


def test_every_file_is_hashed_by_exactly_one_rank(tmp_path):
    folder = tmp_path / "iter_0000003"
    folder.mkdir()
    names = [".metadata", "common.pt", "metadata.json", "__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__3_0.distcp"]
    names += ["__7_0.distcp", HASH_FILE]  # a rank beyond the world falls to rank 0; the hash file is not hashed
    for name in names:
        (folder / name).write_bytes(b"x")
    owners: dict[str, int] = {}
    for rank in range(4):
        for p in _own_files(folder, rank, 4):
            assert p.name not in owners, p.name
            owners[p.name] = rank
    assert set(owners) == set(names) - {HASH_FILE}
    assert owners["__1_0.distcp"] == 1 and owners["__3_0.distcp"] == 3 and owners[".metadata"] == 0
    assert owners["__7_0.distcp"] == 0


def test_keep_last_removes_only_older_complete_checkpoints(tmp_path):
    for it in (2, 4, 6, 8):
        iteration_dir(tmp_path, it).mkdir()
    (tmp_path / TRACKER_FILE).write_text("6\n")  # iter 8 is a save still in progress
    removed = remove_older(tmp_path, 2)
    assert [p.name for p in removed] == ["iter_0000002"]
    assert sorted(p.name for p in Path(tmp_path).glob("iter_*")) == ["iter_0000004", "iter_0000006", "iter_0000008"]
    assert remove_older(tmp_path / "absent", 1) == []
