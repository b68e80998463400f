"""The ReMiT loss: per-token cross-entropy times a weight, summed, over a token count.

    L = sum_t w_t * l_t / N        (never divided by the sum of the weights)

Modes (N is the count of valid tokens unless said otherwise):
  none      w_t = 1
  static    w_t = the stored weight (base model as the proxy for the current model)
  online    w_t = clip(2*sigmoid(d_t - mean_group(d)), 1-eps, 1+eps), d_t = log p_RL(x_t) - log p_theta(x_t),
            where log p_theta = -l_t is the current model's own per-token log-prob from this forward pass.
  shuffled  the stored weights of each row, permuted among that row's valid tokens by a permutation
            seeded with (seed, sample id): the same values, on the wrong tokens (a control).
  rho1      Rho-1's selective language modelling: w_t = 1 for the k = floor(keep_ratio * n + 1/2) valid
            tokens of the micro-batch with the largest excess log p_RL(x_t) - log p_theta(x_t) (ties to the
            earlier position), 0 for the rest; N is the count of kept tokens, so the loss is the mean over
            the kept tokens. keep_ratio = 1 keeps every valid token and is `none` exactly.
  external  w_t = the weight read from an external-weights folder (`remit.shards.external`), applied
            exactly as `static` applies the stored ones.
Every weight is computed under no_grad (the paper treats it as a constant).

`remit_loss` returns the numerator and the count separately: Megatron-Core, with
``calculate_per_token_loss=True``, sums both over micro-batches and data-parallel ranks and divides
once, so the objective is exactly the global weighted sum over the global count (for rho1: the
global sum over the kept tokens of every micro-batch, over the global number of kept tokens).
The numpy version of the weight rule is `remit.shards.weights`; `online_weights` is tested against it.
"""

from __future__ import annotations

import numpy as np
import torch

MODES: tuple[str, ...] = ("none", "static", "online", "shuffled", "rho1", "external")
#: Modes that read the stored weights, and modes that read the stored log p_RL.
NEEDS_WEIGHTS: tuple[str, ...] = ("static", "shuffled", "external")
NEEDS_LOGP_RL: tuple[str, ...] = ("online", "rho1")
#: Order of the values in the report tensor that `remit_loss` returns. n_loss is the loss's denominator
#: (the kept tokens for rho1, else n_valid).
STAT_NAMES: tuple[str, ...] = ("sum_wl", "sum_l", "n_valid", "sum_w", "n_low", "n_high", "n_loss")


def group_index(segment_ids: torch.Tensor, center: str) -> torch.Tensor:
    """Flat centring-group id per position of a [b, s] batch: one group per row or per segment."""
    b, s = segment_ids.shape
    rows = torch.arange(b, device=segment_ids.device)[:, None].expand(b, s)
    if center == "row":
        return rows.reshape(-1)
    if center == "segment":
        # Segment ids are < s within a row (padding is -1 and never valid), so row*(s+1)+seg+1 is unique.
        return (rows * (s + 1) + segment_ids + 1).reshape(-1)
    raise ValueError(f"center must be 'row' or 'segment'; got {center!r}")


@torch.no_grad()
def online_weights(
    logp_rl: torch.Tensor,
    logp_theta: torch.Tensor,
    valid: torch.Tensor,
    groups: torch.Tensor,
    eps: float,
    num_groups: int | None = None,
) -> torch.Tensor:
    """The paper's weight for every position (flat tensors); 1.0 where `valid` is False.

    d is centred by its mean over the valid positions of each group; no division by a std.
    """
    d = (logp_rl - logp_theta).to(torch.float32)
    d = torch.where(valid, d, torch.zeros_like(d))
    # An upper bound instead of groups.max(): reading the max would stall the GPU every micro-batch.
    n_groups = num_groups if num_groups is not None else (int(groups.max()) + 1 if groups.numel() else 0)
    sums = torch.zeros(n_groups, dtype=torch.float32, device=d.device).index_add_(0, groups, d)
    counts = torch.zeros(n_groups, dtype=torch.float32, device=d.device).index_add_(0, groups, valid.float())
    means = sums / counts.clamp(min=1.0)
    w = (2.0 * torch.sigmoid(d - means[groups])).clamp(1.0 - eps, 1.0 + eps)
    return torch.where(valid, w, torch.ones_like(w))


def shuffle_keys(sample_ids: torch.Tensor, seq_len: int, seed: int) -> torch.Tensor:
    """Random sort keys [b, seq_len], one row per sample, from numpy's generator seeded with (seed, sample id).

    A row's keys depend on nothing else, so its permutation is the same for every micro-batch size,
    data-parallel layout and device.
    """
    ids = sample_ids.reshape(-1).tolist()
    keys = np.stack([np.random.default_rng([int(seed), int(i)]).random(seq_len) for i in ids])
    return torch.from_numpy(keys.reshape(len(ids), seq_len))


@torch.no_grad()
def shuffled_weights(weight: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Each row's weights at its valid positions, permuted among those positions by sorting `keys`.

    [b, s] tensors; invalid positions keep their weight. Position j (the i-th valid one in order) takes
    the weight of the valid position whose key has rank i, so a row's multiset of weights is kept.
    """
    out = weight.clone()
    for r in range(weight.shape[0]):
        idx = torch.nonzero(valid[r], as_tuple=False).reshape(-1)
        if idx.numel() < 2:
            continue
        order = torch.argsort(keys[r, idx.cpu()].to(torch.float64), stable=True).to(idx.device)
        out[r, idx] = weight[r, idx[order]]
    return out


@torch.no_grad()
def kept_count(n_valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """k = floor(keep_ratio * n + 1/2): round half up, so that keep_ratio 1 keeps all n tokens."""
    return torch.floor(n_valid.to(torch.float64) * keep_ratio + 0.5).to(torch.int64)


@torch.no_grad()
def rho1_weights(excess: torch.Tensor, valid: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """1.0 for the top k = kept_count(n_valid) valid positions by `excess` (flat), 0 for the others.

    Ties go to the earlier position (a stable sort), so the selection is deterministic. k is a tensor:
    no host synchronisation.
    """
    neg_inf = torch.full_like(excess, -torch.inf, dtype=torch.float64)
    score = torch.where(valid & ~torch.isnan(excess), excess.to(torch.float64), neg_inf)
    order = torch.sort(score, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    k = kept_count(valid.sum(), keep_ratio)
    return ((rank < k) & valid).to(torch.float32)


def _needed(value: torch.Tensor | None, name: str, mode: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"mode {mode!r} needs {name}")
    return value


def remit_loss(
    per_token_loss: torch.Tensor,
    loss_mask: torch.Tensor,
    mode: str,
    *,
    loss_weight: torch.Tensor | None = None,
    logp_rl: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    eps: float = 0.2,
    center: str = "row",
    sample_ids: torch.Tensor | None = None,
    seed: int = 0,
    keep_ratio: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of w*l, the loss's token count as int32, report) for one micro-batch of shape [b, s].

    `loss_mask` is 0/1 validity. `loss_weight` (static, shuffled, external) is label-aligned and already 0 where
    invalid. `logp_rl` is needed for online and rho1, `segment_ids` for online, `sample_ids` ([b]) and
    `seed` for shuffled, `keep_ratio` (in (0, 1]) for rho1. The count is the number of valid tokens,
    for rho1 the number of kept ones. The report is a float64 tensor in `STAT_NAMES` order: sums, so
    that micro-batches and ranks can simply be added up.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    loss = per_token_loss.float().reshape(-1)
    valid = loss_mask.reshape(-1) > 0
    mask = valid.to(loss.dtype)
    if mode == "none":
        w = mask
    elif mode in ("static", "external"):
        w = _needed(loss_weight, "loss_weight", mode).reshape(-1).to(loss.dtype) * mask
    elif mode == "shuffled":
        stored = _needed(loss_weight, "loss_weight", mode)
        b, s = per_token_loss.shape
        keys = shuffle_keys(_needed(sample_ids, "sample_ids", mode), s, seed)
        w = shuffled_weights(stored.reshape(b, s).to(loss.dtype), valid.reshape(b, s), keys).reshape(-1) * mask
    elif mode == "rho1":
        rl = _needed(logp_rl, "logp_rl", mode)
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must lie in (0, 1]; got {keep_ratio}")
        w = rho1_weights(rl.reshape(-1).to(loss.dtype) + loss.detach(), valid, keep_ratio)
    else:
        rl = _needed(logp_rl, "logp_rl", mode)
        groups = group_index(_needed(segment_ids, "segment_ids", mode), center)
        b, s = per_token_loss.shape
        w = online_weights(rl.reshape(-1), -loss.detach(), valid, groups, eps, num_groups=b * (s + 1)) * mask
    w = w.detach()
    sum_wl = (loss * w).sum()
    n_valid = valid.sum().to(torch.int32)
    n_loss = (w > 0).sum().to(torch.int32) if mode == "rho1" else n_valid
    with torch.no_grad():
        # Python-float bounds compare in float32, exactly as the stored weights were clipped, and
        # need no host-to-device copy. For 'none' and 'rho1' (weights 0 or 1) no weight sits at a bound;
        # 'external' weights have none.
        bounded = mode not in ("none", "rho1", "external")
        at_low = ((w <= 1.0 - eps) & valid).sum() if bounded else torch.zeros_like(n_valid)
        at_high = ((w >= 1.0 + eps) & valid).sum() if bounded else torch.zeros_like(n_valid)
        counts = torch.stack([n_valid, at_low.to(torch.int32), at_high.to(torch.int32), n_loss]).double()
        sums = torch.stack([sum_wl.detach(), (loss.detach() * mask).sum(), w.sum()]).double()
        report = torch.stack([sums[0], sums[1], counts[0], sums[2], counts[1], counts[2], counts[3]])
    return sum_wl, n_loss, report


def summarize(report: torch.Tensor) -> dict[str, float]:
    """Turn a summed report into the logged numbers: the optimised loss (over the loss's token count),
    the unweighted loss per valid token, mean weight and the share of valid tokens at each clip bound."""
    r = dict(zip(STAT_NAMES, report.double().tolist()))
    n = max(r["n_valid"], 1.0)
    return {
        "loss": r["sum_wl"] / max(r["n_loss"], 1.0),
        "loss_unweighted": r["sum_l"] / n,
        "mean_weight": r["sum_w"] / n,
        "frac_at_low": r["n_low"] / n,
        "frac_at_high": r["n_high"] / n,
        "valid_tokens": int(r["n_valid"]),
    }
