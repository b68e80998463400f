"""The weighted loss against slow references: plain CE, a hand-written sum, the numpy weight rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from remit.shards.synthetic import make_output
from remit.shards.weights import remit_weights
from remit.train.dataset import RemitDataset
from remit.train.loss import online_weights, remit_loss, summarize


def _batch(seed: int = 0, b: int = 3, s: int = 16, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, s, v, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, s), generator=g)
    mask = (torch.rand(b, s, generator=g) > 0.2).float()
    mask[2, 10:] = 0  # a padded tail
    weight = (0.8 + 0.4 * torch.rand(b, s, generator=g)) * mask
    return logits, labels, mask, weight


def _ce(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)


def test_all_ones_weights_equal_plain_training():
    logits, labels, mask, _ = _batch()
    s_none, n_none, _ = remit_loss(_ce(logits, labels), mask, "none")
    g_none = torch.autograd.grad(s_none / n_none, logits)[0]
    s_w, n_w, _ = remit_loss(_ce(logits, labels), mask, "static", loss_weight=mask.clone())
    g_w = torch.autograd.grad(s_w / n_w, logits)[0]
    assert n_none == n_w
    torch.testing.assert_close(s_w, s_none, rtol=0, atol=0)
    torch.testing.assert_close(g_w, g_none, rtol=0, atol=0)
    # and plain training is the token mean of cross-entropy over valid positions
    ref = F.cross_entropy(logits.flatten(0, 1)[mask.flatten() > 0], labels.flatten()[mask.flatten() > 0])
    torch.testing.assert_close(s_none / n_none, ref)


def test_weighted_loss_matches_a_hand_written_reference():
    logits, labels, mask, weight = _batch(1)
    s, n, report = remit_loss(_ce(logits, labels), mask, "static", loss_weight=weight)
    logp = torch.log_softmax(logits.detach().double(), -1)
    total, count = 0.0, 0
    for i in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            if mask[i, j] > 0:
                total += float(weight[i, j]) * -float(logp[i, j, labels[i, j]])
                count += 1
    assert n.dtype == torch.int32 and int(n) == count
    assert float(s.detach()) / int(n) == pytest.approx(total / count, rel=1e-6)
    # denominator is the token count, not the sum of weights
    assert float(s.detach()) / int(n) != pytest.approx(total / float(weight.sum()), rel=1e-4)
    stats = summarize(report)
    assert stats["loss"] == pytest.approx(total / count, rel=1e-6)
    assert stats["mean_weight"] == pytest.approx(float(weight.sum()) / count, rel=1e-6)
    unweighted = float((_ce(logits, labels).detach() * mask).sum()) / count
    assert stats["loss_unweighted"] == pytest.approx(unweighted, rel=1e-6)


def test_gradients_treat_the_online_weight_as_a_constant():
    logits, labels, mask, _ = _batch(2)
    seg = torch.zeros(labels.shape, dtype=torch.long)
    lrl = -_ce(logits, labels).detach() + 0.3 * torch.randn(labels.shape)
    s, _n, _ = remit_loss(_ce(logits, labels), mask, "online", logp_rl=lrl, segment_ids=seg, eps=0.2)
    g = torch.autograd.grad(s, logits)[0]
    w = online_weights(
        lrl.flatten(),
        -_ce(logits, labels).detach().flatten(),
        mask.flatten() > 0,
        torch.arange(3).repeat_interleave(16),
        0.2,
    ).view(labels.shape)
    g_ref = torch.autograd.grad((_ce(logits, labels) * w * mask).sum(), logits)[0]
    torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("center", ["row", "segment"])
def test_online_weights_match_the_numpy_rule(tmp_path, center):
    """With log p_theta := the stored base log-prob, the torch rule reproduces the stored weights."""
    out = make_output(tmp_path / "o", n_docs=25, seq_len=48, doc_len=(3, 60), center=center, eps=0.2, seed=4)
    ds = RemitDataset(out)
    import pyarrow.compute as pc

    for shard in range(ds.num_shards):
        t = ds.output.read(shard)
        lengths = t.column("n_tokens").to_numpy()
        lb = pc.list_flatten(t.column("logp_base")).to_numpy()
        lr = pc.list_flatten(t.column("logp_rl")).to_numpy()
        starts = [np.asarray(x, np.int32) for x in t.column("segment_starts").to_pylist()]
        ref = remit_weights(lr, lb, lengths, starts, eps=0.2, center=center)
        np.testing.assert_array_equal(ref, pc.list_flatten(t.column("weight")).to_numpy())
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for r in range(t.num_rows):
            sid = int(ds.shard_first[shard]) + r
            s = ds[sid]
            n = lengths[r] - 1
            base = np.zeros(48, np.float32)
            base[:n] = np.nan_to_num(lb[offsets[r] + 1 : offsets[r + 1]])
            valid = torch.from_numpy(s["loss_mask"] > 0)
            from remit.train.loss import group_index

            groups = group_index(torch.from_numpy(s["segment_ids"])[None], center)
            w = online_weights(torch.from_numpy(s["logp_rl"]), torch.from_numpy(base), valid, groups, 0.2)
            expect = torch.from_numpy(s["loss_weight"])
            torch.testing.assert_close(w[valid], expect[valid], rtol=0, atol=2e-6)


def test_clip_shares_are_reported():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = torch.tensor([[0.8, 1.2, 1.0, 0.0]])
    _, _, report = remit_loss(loss, mask, "static", loss_weight=w, eps=0.2)
    stats = summarize(report)
    assert stats["frac_at_low"] == pytest.approx(1 / 3) and stats["frac_at_high"] == pytest.approx(1 / 3)
    _, _, report = remit_loss(loss, mask, "none")
    assert summarize(report)["mean_weight"] == 1.0 and summarize(report)["frac_at_high"] == 0.0


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        remit_loss(torch.ones(1, 2), torch.ones(1, 2), "dynamic")


# -- shuffled and rho1 ---------------------------------------------------------------------------------


def _scored_batch(seed: int, b: int = 4, s: int = 24, v: int = 13):
    """A random batch with stored weights, stored log p_RL, sample ids and an invalid tail in one row."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, s, v, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, s), generator=g)
    mask = (torch.rand(b, s, generator=g) > 0.25).float()
    mask[1, s // 2 :] = 0
    weight = (0.8 + 0.4 * torch.rand(b, s, generator=g)) * mask
    logp_rl = -3.0 * torch.rand(b, s, generator=g) * mask
    ids = torch.randint(0, 10_000, (b,), generator=g)
    return logits, labels, mask, weight, logp_rl, ids


def _slow_shuffle(weight, mask, ids, seed):
    """Loop-by-loop reference: each row's valid weights, reordered by that row's seeded keys."""
    out = weight.clone()
    for r in range(weight.shape[0]):
        keys = np.random.default_rng([seed, int(ids[r])]).random(weight.shape[1])
        valid = [j for j in range(weight.shape[1]) if mask[r, j] > 0]
        ranked = sorted(range(len(valid)), key=lambda i: (keys[valid[i]], i))
        for i, src in enumerate(ranked):
            out[r, valid[i]] = weight[r, valid[src]]
    return out


def test_shuffled_matches_a_slow_reference_and_keeps_each_rows_weights():
    logits, labels, mask, weight, _, ids = _scored_batch(5)
    ce = _ce(logits, labels)
    s, n, report = remit_loss(ce, mask, "shuffled", loss_weight=weight, sample_ids=ids, seed=3)
    ref_w = _slow_shuffle(weight, mask, ids, 3)
    assert int(n) == int(mask.sum())
    torch.testing.assert_close(s, (ce * ref_w).sum(), rtol=1e-6, atol=0)
    g = torch.autograd.grad(s, logits)[0]
    torch.testing.assert_close(g, torch.autograd.grad((_ce(logits, labels) * ref_w).sum(), logits)[0])
    for r in range(weight.shape[0]):
        valid = mask[r] > 0
        # the same multiset of values on the scored tokens, nothing on the others
        torch.testing.assert_close(torch.sort(ref_w[r, valid]).values, torch.sort(weight[r, valid]).values)
        assert torch.all(ref_w[r, ~valid] == 0)
        assert not torch.equal(ref_w[r, valid], weight[r, valid])  # actually moved (24 random floats)
    assert summarize(report)["mean_weight"] == pytest.approx(float(weight.sum() / mask.sum()), rel=1e-6)


def test_shuffled_is_deterministic_per_sample_and_seed():
    logits, labels, mask, weight, _, ids = _scored_batch(6)
    ce = _ce(logits, labels).detach()

    def weights_of(rows, seed):
        from remit.train.loss import shuffle_keys, shuffled_weights

        keys = shuffle_keys(ids[rows], weight.shape[1], seed)
        return shuffled_weights(weight[rows], mask[rows] > 0, keys)

    whole = weights_of(slice(0, 4), 3)
    # split into micro-batches of one and two rows, in another order: each row gets the same weights
    parts = torch.cat([weights_of(slice(0, 1), 3), weights_of(slice(1, 3), 3), weights_of(slice(3, 4), 3)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    torch.testing.assert_close(weights_of(slice(0, 4), 3), whole, rtol=0, atol=0)
    assert not torch.equal(weights_of(slice(0, 4), 4), whole)  # another seed, another permutation
    s3, _, _ = remit_loss(ce, mask, "shuffled", loss_weight=weight, sample_ids=ids, seed=3)
    assert float(s3) == pytest.approx(float((ce * whole).sum()), rel=1e-6)


def _slow_rho1(ce, mask, logp_rl, keep_ratio):
    """Loop-by-loop reference: rank the valid tokens by excess (ties: earlier first), keep the top k."""
    flat_ce, flat_m, flat_rl = ce.detach().flatten().tolist(), mask.flatten().tolist(), logp_rl.flatten().tolist()
    valid = [i for i, m in enumerate(flat_m) if m > 0]
    excess = {i: flat_rl[i] - (-flat_ce[i]) for i in valid}
    ranked = sorted(valid, key=lambda i: (-excess[i], i))
    k = int(np.floor(keep_ratio * len(valid) + 0.5))
    keep = torch.zeros(len(flat_m))
    keep[ranked[:k]] = 1.0
    return keep.view(ce.shape), k


@pytest.mark.parametrize("keep_ratio", [0.6, 0.25, 0.7])
def test_rho1_matches_a_slow_reference(keep_ratio):
    logits, labels, mask, _, logp_rl, _ = _scored_batch(7)
    s, n, report = remit_loss(_ce(logits, labels), mask, "rho1", logp_rl=logp_rl, keep_ratio=keep_ratio)
    keep, k = _slow_rho1(_ce(logits, labels), mask, logp_rl, keep_ratio)
    assert n.dtype == torch.int32 and int(n) == k
    ref = (_ce(logits, labels) * keep).sum()
    torch.testing.assert_close(s, ref, rtol=1e-6, atol=0)
    g = torch.autograd.grad(s / n, logits)[0]
    g_ref = torch.autograd.grad((_ce(logits, labels) * keep).sum() / k, logits)[0]
    torch.testing.assert_close(g, g_ref)
    stats = summarize(report)
    # the optimised loss is the mean over the kept tokens; the unweighted one stays over all valid tokens
    assert stats["loss"] == pytest.approx(float(ref.detach()) / k, rel=1e-6)
    n_valid = int(mask.sum())
    assert stats["valid_tokens"] == n_valid and stats["mean_weight"] == pytest.approx(k / n_valid)
    assert stats["loss_unweighted"] == pytest.approx(
        float((_ce(logits, labels).detach() * mask).sum()) / n_valid, rel=1e-6
    )


def test_rho1_keeps_the_tokens_the_rl_model_likes_more():
    ce = torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    logp_rl = torch.tensor([[-1.0, -3.0, -0.5, -1.0, 0.0]])  # excess 1, -1, 1.5, 1 (tie with 0), masked
    from remit.train.loss import rho1_weights

    w = rho1_weights((logp_rl + ce).flatten(), mask.flatten() > 0, 0.5)
    assert w.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]  # top 2: position 2, then the earlier of the tie


def test_rho1_with_keep_ratio_one_is_none_exactly():
    for seed in range(3):
        logits, labels, mask, _, logp_rl, _ = _scored_batch(10 + seed)
        s_none, n_none, r_none = remit_loss(_ce(logits, labels), mask, "none")
        s_rho, n_rho, r_rho = remit_loss(_ce(logits, labels), mask, "rho1", logp_rl=logp_rl, keep_ratio=1.0)
        assert int(n_none) == int(n_rho)
        torch.testing.assert_close(s_rho, s_none, rtol=0, atol=0)
        g_none = torch.autograd.grad(s_none / n_none, logits)[0]
        g_rho = torch.autograd.grad(s_rho / n_rho, logits)[0]
        torch.testing.assert_close(g_rho, g_none, rtol=0, atol=0)
        torch.testing.assert_close(r_rho, r_none, rtol=0, atol=0)


def test_kept_count_rounds_half_up_without_float_surprises():
    from remit.train.loss import kept_count

    got = [int(kept_count(torch.tensor(n), r)) for n, r in [(10, 0.7), (10, 0.6), (3, 0.5), (7, 1.0), (1, 0.4)]]
    assert got == [7, 6, 2, 7, 0]


@pytest.mark.parametrize(
    "mode, kwargs, needs",
    [
        ("shuffled", {"loss_weight": torch.ones(1, 2)}, "sample_ids"),
        ("shuffled", {}, "loss_weight"),
        ("rho1", {}, "logp_rl"),
        ("rho1", {"logp_rl": torch.zeros(1, 2), "keep_ratio": 0.0}, "keep_ratio"),
    ],
)
def test_new_modes_name_what_they_miss(mode, kwargs, needs):
    with pytest.raises(ValueError, match=needs):
        remit_loss(torch.ones(1, 2), torch.ones(1, 2), mode, **kwargs)
