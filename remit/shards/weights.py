"""The ReMiT weight rule (paper section 3.2), vectorised over many rows at once.

    d_t = log p_RL(x_t) - log p_base(x_t)
    d_t <- d_t - mean(d over the scored positions of its group)     (group = row or segment)
    w_t = clip(2 * sigmoid(d_t), 1 - eps, 1 + eps)

Positions without a log-prob (NaN: the first token of every segment) take no part in the mean and
get weight 1.0. Arithmetic is float64; results are float32. The same rule for torch tensors (the
trainer's ``online`` mode) lives in ``remit.train.loss`` and is tested against this one.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

Center = Literal["row", "segment"]
RULE = "w = clip(2*sigmoid(d - mean_group(d)), 1-eps, 1+eps); d = logp_rl - logp_base; NaN positions: w = 1"


def check_eps(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must lie in [0, 1) so that weights stay positive; got {eps}")


def group_ids(row_lengths: np.ndarray, segment_starts: list[np.ndarray] | None) -> np.ndarray:
    """Flat group id per token: one group per row, or one per segment when `segment_starts` is given.

    `segment_starts[r]` holds the in-row start offsets of row r's segments (first one 0, increasing).
    """
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    n_rows = len(row_lengths)
    row_of_token = np.repeat(np.arange(n_rows, dtype=np.int64), row_lengths)
    if segment_starts is None:
        return row_of_token
    row_offsets = np.concatenate([[0], np.cumsum(row_lengths)[:-1]]) if n_rows else np.zeros(0, np.int64)
    starts = (
        np.concatenate([np.asarray(s, dtype=np.int64) + off for s, off in zip(segment_starts, row_offsets)])
        if n_rows
        else np.zeros(0, np.int64)
    )
    is_start = np.zeros(int(row_lengths.sum()), dtype=np.int64)
    is_start[starts[starts < len(is_start)]] = 1
    return np.cumsum(is_start) - 1


def centered_discrepancy(logp_rl: np.ndarray, logp_base: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """d - mean_group(d) in float64, NaN where either log-prob is NaN."""
    d = np.asarray(logp_rl, np.float64) - np.asarray(logp_base, np.float64)
    valid = ~np.isnan(d)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    sums = np.bincount(groups[valid], weights=d[valid], minlength=n_groups)
    counts = np.bincount(groups[valid], minlength=n_groups)
    means = np.divide(sums, counts, out=np.zeros(n_groups), where=counts > 0)
    return d - means[groups]


def weights_from_centered(dc: np.ndarray, eps: float) -> np.ndarray:
    """clip(2*sigmoid(dc), 1-eps, 1+eps) with weight 1.0 where dc is NaN."""
    check_eps(eps)
    with np.errstate(over="ignore"):
        w = 2.0 / (1.0 + np.exp(-dc))
    w = np.clip(w, 1.0 - eps, 1.0 + eps)
    w[np.isnan(dc)] = 1.0
    return w.astype(np.float32)


def remit_weights(
    logp_rl: np.ndarray,
    logp_base: np.ndarray,
    row_lengths: np.ndarray,
    segment_starts: list[np.ndarray] | None = None,
    *,
    eps: float = 0.2,
    center: Center = "row",
) -> np.ndarray:
    """Weights for flat, concatenated rows. `segment_starts` is needed only for ``center="segment"``."""
    if center not in get_args(Center):
        raise ValueError(f"center must be one of {get_args(Center)}; got {center!r}")
    if center == "segment" and segment_starts is None:
        raise ValueError("center='segment' needs segment_starts")
    if len(logp_rl) != len(logp_base) or len(logp_rl) != int(np.sum(row_lengths)):
        raise ValueError(
            f"length mismatch: logp_rl {len(logp_rl)}, logp_base {len(logp_base)}, rows {int(np.sum(row_lengths))}"
        )
    groups = group_ids(row_lengths, segment_starts if center == "segment" else None)
    return weights_from_centered(centered_discrepancy(logp_rl, logp_base, groups), eps)
