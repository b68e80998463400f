"""External weights: per-token loss weights that come from outside the annotation, beside an output.

`remit-train --weights external --external-weights DIR` trains an output's tokens with weights that no
log-prob rule produced: labels, another scorer's weights, a hand-made mask. They live in their own
folder so that the output's shards, and every check of their log-probs and weights, stay as they are.

- One Parquet file per shard of the output, with the shard's file name.
- Columns `sample_id` (int64) and `weight` (list<float32>): the shard's rows in the same order, each
  weight list as long as the row's `token_ids`; value `i` weighs the loss of predicting token `i`
  (the same alignment as the output's `weight` column: the first token of a segment has no loss).
- Weights are finite and at least 0.

A file is checked when the trainer first reads its shard: the sample ids, the list lengths and the
values; a mismatch names the file and row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remit.common.atomic import atomic_path
from remit.shards.manifest import ShardError

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("weight", pa.list_(pa.float32()), nullable=False),
    ]
)


def external_file(folder: str | Path, shard: str | Path) -> Path:
    """The file of `folder` that holds the weights of the output's shard file `shard`."""
    return Path(folder) / Path(shard).name


def write_external(path: str | Path, sample_ids: Sequence[int], weights: Sequence[np.ndarray]) -> None:
    """Write one shard's external weights atomically; ValueError on a weight below 0 or not finite."""
    for sid, w in zip(sample_ids, weights):
        w = np.asarray(w, np.float64)
        if len(w) and (not np.isfinite(w).all() or w.min() < 0):
            raise ValueError(f"{path}: sample {sid} has a weight below 0 or not finite")
    table = pa.table(
        {
            "sample_id": pa.array(list(sample_ids), pa.int64()),
            "weight": pa.array([np.asarray(w, np.float32) for w in weights], pa.list_(pa.float32())),
        },
        schema=SCHEMA,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_folder(folder: str | Path, shards: Sequence[Path], data: str | Path) -> None:
    """ShardError naming the first shard of the output `data` without its external-weights file."""
    root = Path(folder)
    if not root.is_dir():
        raise ShardError(
            f"--external-weights {root}: no such folder; pass the folder that holds one weights file per shard of {data}"
        )
    for shard in shards:
        path = external_file(root, shard)
        if not path.is_file():
            raise ShardError(
                f"{path}: missing; --external-weights needs one file per shard of {data} (see docs/format.md, "
                "External weights)"
            )


def read_external(path: Path, sample_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The flat float32 weights of one shard whose rows have `sample_ids` and `lengths` tokens; ShardError
    naming the file and row when the file does not match the shard or holds a weight below 0."""
    fix = "write the external weights again for this output"
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a missing or corrupt file
        raise ShardError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {e}); {fix}") from None
    if table.schema.names != SCHEMA.names or not all(table.schema.field(f.name).type.equals(f.type) for f in SCHEMA):
        raise ShardError(f"{path}: columns {table.schema}, expected sample_id: int64 and weight: list<float>; {fix}")
    ids = table.column("sample_id").to_numpy()
    if len(ids) != len(sample_ids) or not np.array_equal(ids, sample_ids):
        bad = _first_difference(ids, sample_ids)
        raise ShardError(
            f"{path}: row {bad} has sample_id {_at(ids, bad)}, its shard's row {bad} is sample {_at(sample_ids, bad)} "
            f"({len(ids)} rows against the shard's {len(sample_ids)}); {fix}"
        )
    have = pc.list_value_length(table.column("weight")).to_numpy(zero_copy_only=False).astype(np.int64)
    wrong = np.flatnonzero(have != lengths)
    if len(wrong):
        r = int(wrong[0])
        raise ShardError(
            f"{path}: row {r} (sample {int(ids[r])}) has {int(have[r])} weights for {int(lengths[r])} tokens; {fix}"
        )
    flat = pc.list_flatten(table.column("weight")).to_numpy().astype(np.float32)
    bad_values = ~np.isfinite(flat) | (flat < 0)
    if bad_values.any():
        row = int(np.searchsorted(np.cumsum(lengths), int(np.flatnonzero(bad_values)[0]), side="right"))
        raise ShardError(f"{path}: row {row} (sample {int(ids[row])}) has a weight below 0 or not finite; {fix}")
    return flat


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _at(a: np.ndarray, i: int) -> str:
    return str(int(a[i])) if i < len(a) else "none"


__all__ = ["SCHEMA", "check_folder", "external_file", "read_external", "write_external"]
