"""The weight rule against a slow, loop-by-loop reference written from the paper's text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from remit.shards.weights import remit_weights


def reference_weights(lr, lb, lengths, starts, eps, center):
    """One token at a time, in plain Python floats."""
    out, pos = [], 0
    for n, st in zip(lengths, starts):
        d = [float(lr[pos + i]) - float(lb[pos + i]) for i in range(n)]
        groups = (
            [list(range(n))] if center == "row" else [list(range(a, b)) for a, b in zip(list(st), list(st[1:]) + [n])]
        )
        w = [1.0] * n
        for g in groups:
            valid = [i for i in g if not math.isnan(d[i])]
            if not valid:
                continue
            mean = sum(d[i] for i in valid) / len(valid)
            for i in valid:
                x = 2.0 / (1.0 + math.exp(-(d[i] - mean)))
                w[i] = min(max(x, 1.0 - eps), 1.0 + eps)
        out.extend(w)
        pos += n
    return np.array(out, np.float32)


def random_rows(seed, n_rows=7, max_len=40, scale=0.5):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, n_rows)
    starts = []
    for n in lengths:
        k = int(rng.integers(1, min(n, 4) + 1))
        starts.append(
            np.sort(np.concatenate([[0], rng.choice(np.arange(1, n), k - 1, replace=False)])).astype(np.int32)
            if n > 1 and k > 1
            else np.array([0], np.int32)
        )
    total = int(lengths.sum())
    lb = -rng.gamma(2.0, 1.0, total)
    lr = lb + rng.normal(0, scale, total)
    offs = np.concatenate([[0], np.cumsum(lengths)])
    for st, o in zip(starts, offs):
        lb[o + st] = np.nan
        lr[o + st] = np.nan
    return lr.astype(np.float32), lb.astype(np.float32), lengths, starts


@pytest.mark.parametrize("center", ["row", "segment"])
@pytest.mark.parametrize("eps", [0.2, 0.05, 0.5])
@pytest.mark.parametrize("seed", range(5))
def test_matches_reference(center, eps, seed):
    lr, lb, lengths, starts = random_rows(seed)
    got = remit_weights(lr, lb, lengths, starts, eps=eps, center=center)
    want = reference_weights(lr, lb, lengths, starts, eps, center)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_equal_models_give_weight_one():
    _, lb, lengths, starts = random_rows(3)
    for center in ("row", "segment"):
        w = remit_weights(lb, lb, lengths, starts, center=center)
        assert np.all(w == 1.0)


def test_clip_bounds_are_reached_and_never_exceeded():
    lr, lb, lengths, starts = random_rows(4, scale=5.0)
    w = remit_weights(lr, lb, lengths, starts, eps=0.2)
    assert w.min() == np.float32(0.8) and w.max() == np.float32(1.2)
    # Saturation: |d - mean| > ln 1.5 clips, inside it does not.
    x = np.array([np.nan, 0.0, 0.5, -0.5, np.log(1.5) - 1e-3, -(np.log(1.5) - 1e-3)], np.float32)
    w = remit_weights(x, np.zeros_like(x), np.array([len(x)]))
    assert w[0] == 1.0
    assert w[2] == np.float32(1.2) and w[3] == np.float32(0.8)
    assert 1.0 < w[4] < 1.2 and 0.8 < w[5] < 1.0


def test_nan_positions_get_weight_one_and_do_not_shift_the_mean():
    lb = np.array([np.nan, -1.0, -2.0, np.nan, -1.0], np.float32)
    lr = np.array([np.nan, -0.9, -2.1, np.nan, -1.0], np.float32)
    w = remit_weights(lr, lb, np.array([5]))
    assert w[0] == 1.0 and w[3] == 1.0
    # mean over the 3 scored positions is 0: w = 2*sigmoid(d)
    np.testing.assert_allclose(w[[1, 2, 4]], 2 / (1 + np.exp(-np.array([0.1, -0.1, 0.0]))), atol=1e-6)


def test_rejects_bad_arguments():
    lr, lb, lengths, _starts = random_rows(0)
    with pytest.raises(ValueError, match="eps"):
        remit_weights(lr, lb, lengths, eps=1.5)
    with pytest.raises(ValueError, match="center"):
        remit_weights(lr, lb, lengths, center="doc")
    with pytest.raises(ValueError, match="segment_starts"):
        remit_weights(lr, lb, lengths, center="segment")
    with pytest.raises(ValueError, match="length mismatch"):
        remit_weights(lr[:-1], lb, lengths)
