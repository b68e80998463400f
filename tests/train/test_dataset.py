"""The training view of an annotation output: alignment, masks, order, DP split, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from remit.shards import ShardError
from remit.shards.synthetic import make_output
from remit.train.dataset import RemitDataset, attention_mask, make_sample
from remit.train.sampler import SampleOrder, micro_batches, rank_sample_ids

SEQ = 32


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return make_output(
        tmp_path_factory.mktemp("out") / "o", n_docs=30, seq_len=SEQ, doc_len=(3, 40), rows_per_shard=5, seed=3
    )


def reference_sample(tokens, weight, logp_rl, starts, seq_len):
    """A slow, loop-based statement of the convention that make_sample vectorises."""
    n = len(tokens)
    starts = set(int(s) for s in starts)
    seg, seg_start, out = -1, 0, {k: [] for k in ("tokens", "labels", "mask", "w", "lrl", "pos", "seg")}
    for i in range(seq_len):
        if i < n - 1:
            if i in starts:
                seg, seg_start = seg + 1, i
            ok = (i + 1) not in starts
            out["tokens"].append(tokens[i])
            out["labels"].append(tokens[i + 1])
            out["mask"].append(1.0 if ok else 0.0)
            out["w"].append(weight[i + 1] if ok else 0.0)
            out["lrl"].append(logp_rl[i + 1] if ok else 0.0)
            out["pos"].append(i - seg_start)
            out["seg"].append(seg)
        else:
            out["tokens"].append(0)
            out["labels"].append(0)
            out["mask"].append(0.0)
            out["w"].append(0.0)
            out["lrl"].append(0.0)
            out["pos"].append(i - (n - 1))
            out["seg"].append(-1)
    return out


def test_samples_follow_the_label_shift_convention(output):
    ds = RemitDataset(output)
    for sid in range(len(ds)):
        tokens, weight, lrl, starts = ds.row(sid)
        s = ds[sid]
        ref = reference_sample(tokens, weight, lrl, starts, SEQ)
        np.testing.assert_array_equal(s["tokens"], ref["tokens"])
        np.testing.assert_array_equal(s["labels"], ref["labels"])
        np.testing.assert_array_equal(s["loss_mask"], ref["mask"])
        np.testing.assert_array_equal(s["loss_weight"], np.array(ref["w"], np.float32))
        np.testing.assert_array_equal(s["logp_rl"], np.array(ref["lrl"], np.float32))
        np.testing.assert_array_equal(s["position_ids"], ref["pos"])
        np.testing.assert_array_equal(s["segment_ids"], ref["seg"])
        assert np.isfinite(s["logp_rl"]).all()
        # Every position with a loss has a stored log-prob: the label is never a segment's first token.
        assert not np.isnan(lrl[1:][s["loss_mask"][: len(tokens) - 1] > 0]).any()


def test_attention_is_causal_within_segments_only():
    seg = np.array([[0, 0, 0, 1, 1, 2, -1, -1]])
    m = attention_mask(seg)[0, 0]  # True = masked
    for q in range(8):
        for k in range(8):
            allowed = k <= q and seg[0, q] == seg[0, k]
            assert m[q, k] == (not allowed), (q, k)
    # a row whose segments restart mid-row: positions restart too
    s = make_sample(
        np.arange(10, dtype=np.int32),
        np.ones(10, np.float32),
        np.zeros(10, np.float32),
        np.array([0, 4, 7], np.int32),
        seq_len=9,
    )
    np.testing.assert_array_equal(s["position_ids"], [0, 1, 2, 3, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(s["loss_mask"], [1, 1, 1, 0, 1, 1, 0, 1, 1])


def test_last_short_row_is_padded_and_masked(output):
    ds = RemitDataset(output)
    last = ds[len(ds) - 1]
    n = len(ds.row(len(ds) - 1)[0])
    assert n < SEQ + 1, "the fixture should end in a short row"
    assert last["loss_mask"][n - 1 :].sum() == 0 and last["loss_weight"][n - 1 :].sum() == 0


def test_order_is_seeded_and_a_permutation(output):
    ds = RemitDataset(output)
    a, b = SampleOrder(ds.shard_rows, seed=7, shuffle_shards=2), SampleOrder(ds.shard_rows, seed=7, shuffle_shards=2)
    c = SampleOrder(ds.shard_rows, seed=8, shuffle_shards=2)
    np.testing.assert_array_equal(a.epoch_order(0), b.epoch_order(0))
    assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert sorted(a.epoch_order(1)) == list(range(len(ds)))


def test_dp_ranks_are_disjoint_and_cover_everything(output):
    ds = RemitDataset(output)
    order = SampleOrder(ds.shard_rows, seed=1, shuffle_shards=3)
    gbs, steps = 4, len(ds) // 4
    seen = {r: [] for r in range(2)}
    for step in range(steps):
        one = rank_sample_ids(order, step * gbs, gbs, 0, 1)
        two = [rank_sample_ids(order, step * gbs, gbs, r, 2) for r in range(2)]
        np.testing.assert_array_equal(one, np.concatenate(two))  # same global batch for any DP size
        for r in range(2):
            seen[r].extend(two[r].tolist())
    assert not set(seen[0]) & set(seen[1])
    covered = set(seen[0]) | set(seen[1])
    assert covered == set(order.epoch_order(0)[: steps * gbs].tolist())
    rest = rank_sample_ids(order, steps * gbs, len(ds) - steps * gbs, 0, 1) if len(ds) % gbs else []
    assert covered | set(np.asarray(rest).tolist()) == set(range(len(ds)))  # every sample, none twice above


def test_weights_stay_with_their_tokens_for_any_dp_and_micro_batch(output):
    """The (token -> weight) pairs a step trains on do not depend on DP size or micro-batch size."""
    ds = RemitDataset(output)
    order = SampleOrder(ds.shard_rows, seed=5)

    def step_pairs(dp: int, mbs: int) -> list[tuple]:
        pairs = []
        for rank in range(dp):
            it = micro_batches(ds, order, global_batch=4, micro_batch=mbs, dp_rank=rank, dp_size=dp)
            for _ in range(4 // (mbs * dp)):
                mb = next(it)
                for b in range(len(mb["sample_id"])):
                    valid = mb["loss_mask"][b] > 0
                    pairs.append(
                        (int(mb["sample_id"][b]), mb["labels"][b][valid].tolist(), mb["loss_weight"][b][valid].tolist())
                    )
        return sorted(pairs)

    ref = step_pairs(1, 4)
    for dp, mbs in [(1, 1), (2, 1), (2, 2), (4, 1)]:
        assert step_pairs(dp, mbs) == ref


def test_resume_from_consumed_samples(output):
    ds = RemitDataset(output)
    order = SampleOrder(ds.shard_rows, seed=2)
    full = micro_batches(ds, order, global_batch=4, micro_batch=2, dp_rank=0, dp_size=1)
    batches = [next(full)["sample_id"].tolist() for _ in range(10)]
    resumed = micro_batches(ds, order, global_batch=4, micro_batch=2, dp_rank=0, dp_size=1, consumed_samples=12)
    assert [next(resumed)["sample_id"].tolist() for _ in range(4)] == batches[6:10]


def test_epochs_continue_past_the_end(output):
    ds = RemitDataset(output)
    order = SampleOrder(ds.shard_rows, seed=2)
    ids = order.ids(len(ds) - 2, len(ds) + 3)
    assert len(ids) == 5
    assert list(ids[:2]) == list(order.epoch_order(0)[-2:])
    assert list(ids[2:]) == list(order.epoch_order(1)[:3])


def test_refuses_other_seq_len_and_tokenizer(output):
    with pytest.raises(ShardError, match="sequence length"):
        RemitDataset(output, seq_len=SEQ * 2)
    with pytest.raises(ShardError, match="tokenizer"):
        RemitDataset(output, tokenizer_hash="sha256:another")
    RemitDataset(output, seq_len=SEQ, tokenizer_hash="sha256:synthetic")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_refuses_a_truncated_shard_at_open(output, tmp_path):
    bad = _copy(output, tmp_path / "bad")
    shard = bad / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match=r"shard-00001\.parquet.*(corrupt|cannot be opened|Delete it)"):
        RemitDataset(bad)


def test_refuses_a_shard_whose_tokens_changed(output, tmp_path):
    bad = _copy(output, tmp_path / "bad")
    shard = bad / "shard-00002.parquet"
    table = pq.read_table(shard)
    tokens = table.column("token_ids").to_pylist()
    tokens[1][3] = (tokens[1][3] + 1) % 500
    import pyarrow as pa

    table = table.set_column(1, "token_ids", pa.array(tokens, table.schema.field("token_ids").type))
    pq.write_table(table, shard)
    ds = RemitDataset(bad)  # the footer is fine; the checksum is checked when the shard is read
    with pytest.raises(
        ShardError,
        match=r"shard-00002\.parquet: column 'token_ids' does not match the checksum .*remit-annotate repair",
    ):
        _ = ds[int(ds.shard_first[2])]


def test_refuses_a_manifest_that_disagrees_with_a_shard(output, tmp_path):
    bad = _copy(output, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["shards"][0]["rows"] += 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"shard-00000\.parquet: 5 rows, the manifest says 6"):
        RemitDataset(bad)


def test_a_one_token_last_row_is_an_all_masked_sample(tmp_path):
    # 10 tokens with seq_len 8 pack into rows of 9 and 1: the output's last row holds a single token.
    out = make_output(tmp_path / "o", n_docs=1, seq_len=8, doc_len=(10, 10), rows_per_shard=4, seed=0)
    ds = RemitDataset(out, seq_len=8, tokenizer_hash="sha256:synthetic")
    assert len(ds) == 2
    last = ds[1]
    assert last["loss_mask"].sum() == 0 and last["loss_weight"].sum() == 0
    assert ds[0]["loss_mask"].sum() > 0
    for mode in ("none", "static", "online"):
        import torch

        from remit.train.loss import remit_loss

        b = {k: torch.as_tensor(v)[None] for k, v in last.items() if k != "attention_mask"}
        s, n, _ = remit_loss(
            torch.ones(1, 8),
            b["loss_mask"],
            mode,
            loss_weight=b["loss_weight"],
            logp_rl=b["logp_rl"],
            segment_ids=b["segment_ids"],
        )
        assert float(s) == 0.0 and int(n) == 0
