"""External weights (`--weights external`): read beside the output, checked against each shard, and
applied as `static` applies the stored weights."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from remit.shards import ShardError, open_output
from remit.shards.external import write_external
from remit.shards.synthetic import make_output
from remit.train.config import TrainConfig
from remit.train.dataset import RemitDataset
from tests.train import runs


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    return make_output(
        tmp_path_factory.mktemp("out") / "o", n_docs=30, seq_len=32, doc_len=(3, 40), rows_per_shard=5, seed=3
    )


def _write(output, folder, make):
    """One external file per shard; `make(sample_id, n_tokens)` gives a row's weights."""
    out = open_output(output)
    for i in range(len(out.manifest.shards)):
        table = out.read(i, columns=["sample_id", "n_tokens"])
        ids = table.column("sample_id").to_pylist()
        lengths = table.column("n_tokens").to_pylist()
        write_external(folder / out.path(i).name, ids, [make(s, n) for s, n in zip(ids, lengths)])
    return folder


def _random(sample_id, n):
    return np.random.default_rng(sample_id).uniform(0.0, 2.0, n).astype(np.float32)


def test_rows_carry_the_external_weights_and_everything_else_unchanged(output, tmp_path):
    ext = _write(output, tmp_path / "ext", _random)
    plain, ds = RemitDataset(output), RemitDataset(output, external_weights=ext)
    for sid in range(len(ds)):
        tokens, weight, logp_rl, starts = ds.row(sid)
        p_tokens, p_weight, p_logp_rl, p_starts = plain.row(sid)
        np.testing.assert_array_equal(weight, _random(sid, len(tokens)))
        assert not np.array_equal(weight, p_weight)
        for a, b in ((tokens, p_tokens), (logp_rl, p_logp_rl), (starts, p_starts)):
            np.testing.assert_array_equal(a, b)
        sample = ds[sid]
        valid = sample["loss_mask"] > 0
        np.testing.assert_array_equal(sample["loss_weight"][valid], weight[1:][valid[: len(tokens) - 1]])


def _break(folder, shard, change):
    path = folder / shard
    table = pq.read_table(path).to_pydict()
    change(table)
    ids, weights = table["sample_id"], [np.asarray(w, np.float32) for w in table["weight"]]
    pq.write_table(_table(ids, weights), path)


def _table(ids, weights):
    import pyarrow as pa

    from remit.shards.external import SCHEMA

    return pa.table(
        {"sample_id": pa.array(ids, pa.int64()), "weight": pa.array(weights, pa.list_(pa.float32()))}, schema=SCHEMA
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda t: t["weight"].__setitem__(2, list(t["weight"][2])[:-1]),
            r"row 2 \(sample 7\) has 32 weights for 33 tokens",
        ),
        (
            lambda t: t["weight"].__setitem__(1, [-0.5] + list(t["weight"][1])[1:]),
            r"row 1 \(sample 6\) has a weight below 0",
        ),
        (lambda t: t["sample_id"].__setitem__(3, 99), "row 3 has sample_id 99"),
        (lambda t: (t["sample_id"].pop(), t["weight"].pop()), "row 4 has sample_id none"),
    ],
)
def test_a_file_that_does_not_match_its_shard_is_refused_naming_file_and_row(output, tmp_path, change, message):
    ext = _write(output, tmp_path / "ext", _random)
    shard = open_output(output).path(1).name
    _break(ext, shard, change)
    ds = RemitDataset(output, external_weights=ext)
    ds.row(0)  # shard 0 is fine
    with pytest.raises(ShardError, match=message) as e:
        ds.row(5)
    assert shard in str(e.value) and "write the external weights again" in str(e.value)


def test_a_missing_folder_or_file_is_refused_at_open(output, tmp_path):
    with pytest.raises(ShardError, match="no such folder"):
        RemitDataset(output, external_weights=tmp_path / "nowhere")
    ext = _write(output, tmp_path / "ext", _random)
    missing = open_output(output).path(2).name
    (ext / missing).unlink()
    with pytest.raises(ShardError, match=f"{missing}: missing"):
        RemitDataset(output, external_weights=ext)


def test_write_refuses_negative_or_nonfinite_weights(tmp_path):
    for bad in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="sample 4 has a weight below 0 or not finite"):
            write_external(tmp_path / "x.parquet", [4], [np.array([1.0, bad])])
        assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": "external"}, "weights: external reads its weights from a folder; pass --external-weights"),
        ({"weights": "static", "external_weights": "w"}, "external_weights: given with --weights static"),
        ({"weights": "external", "external_weights": "w", "eval_data": "e"}, "eval_data: external weights"),
    ],
)
def test_config_refuses_inconsistent_flags(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", save="s", init_hf="m", **kwargs)


def test_training_with_the_stored_weights_as_external_ones_is_static_exactly(data, random_llama, tmp_path):
    """The same weights through the external folder and through the output's column: identical runs."""
    out = open_output(data)
    ext = tmp_path / "ext"
    ext.mkdir()
    for i in range(len(out.manifest.shards)):
        table = out.read(i, columns=["sample_id", "weight"])
        write_external(
            ext / out.path(i).name,
            table.column("sample_id").to_pylist(),
            [np.asarray(w, np.float32) for w in table.column("weight").to_pylist()],
        )
    losses = {}
    for mode, extra in (("static", []), ("external", ["--external-weights", str(ext)])):
        run = tmp_path / mode
        flags = [a if a != "online" else mode for a in runs.BASE_FLAGS]
        proc = subprocess.run(
            [sys.executable, "-m", "remit.train", "--data", str(data), "--init-hf", str(random_llama),
             "--save", str(run), "--train-iters", "3", *flags, *extra],
            env=runs.env(), cwd=runs.REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        runs.ok(proc)
        losses[mode] = [(r["step"], r["loss"], r["loss_unweighted"]) for r in runs.metrics(run) if "loss" in r]
    assert len(losses["static"]) == 3
    assert losses["external"] == losses["static"]
    shutil.rmtree(tmp_path / "static")
