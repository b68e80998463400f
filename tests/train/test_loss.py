"""The weighted loss against slow references: plain CE, a hand-written sum, the numpy weight rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from remit.shards.weights import remit_weights
from remit.train.dataset import RemitDataset
from remit.train.loss import online_weights, remit_loss, summarize
from tests.synthetic import make_output


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
