"""The ReMiT loss: per-token cross-entropy times a weight, summed, over the count of valid tokens.

    L = sum_t w_t * l_t / N_valid        (never divided by the sum of the weights)

Modes:
  none    w_t = 1
  static  w_t = the stored weight (base model as the proxy for the current model)
  online  w_t = clip(2*sigmoid(d_t - mean_group(d)), 1-eps, 1+eps), d_t = log p_RL(x_t) - log p_theta(x_t),
          where log p_theta = -l_t is the current model's own per-token log-prob from this forward pass.
          The weight is computed under no_grad (the paper treats it as a constant).

`remit_loss` returns the numerator and the count separately: Megatron-Core, with
``calculate_per_token_loss=True``, sums both over micro-batches and data-parallel ranks and divides
once, so the objective is exactly the global weighted sum over the global valid-token count.
The numpy version of the weight rule is `remit.shards.weights`; `online_weights` is tested against it.
"""

from __future__ import annotations

import torch

MODES: tuple[str, ...] = ("none", "static", "online")
#: Order of the values in the report tensor that `remit_loss` returns.
STAT_NAMES: tuple[str, ...] = ("sum_wl", "sum_l", "n_valid", "sum_w", "n_low", "n_high")


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of w*l, valid-token count as int32, report) for one micro-batch of shape [b, s].

    `loss_mask` is 0/1 validity. `loss_weight` (static) is label-aligned and already 0 where invalid.
    `logp_rl` and `segment_ids` are needed for online. The report is a float64 tensor in
    `STAT_NAMES` order: sums, so that micro-batches and ranks can simply be added up.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    loss = per_token_loss.float().reshape(-1)
    valid = loss_mask.reshape(-1) > 0
    mask = valid.to(loss.dtype)
    if mode == "none":
        w = mask
    elif mode == "static":
        if loss_weight is None:
            raise ValueError("mode 'static' needs loss_weight")
        w = loss_weight.reshape(-1).to(loss.dtype) * mask
    else:
        if logp_rl is None or segment_ids is None:
            raise ValueError("mode 'online' needs logp_rl and segment_ids")
        groups = group_index(segment_ids, center)
        b, s = segment_ids.shape
        w = online_weights(logp_rl.reshape(-1), -loss.detach(), valid, groups, eps, num_groups=b * (s + 1)) * mask
    w = w.detach()
    sum_wl = (loss * w).sum()
    n_valid = valid.sum().to(torch.int32)
    with torch.no_grad():
        # Python-float bounds compare in float32, exactly as the stored weights were clipped, and
        # need no host-to-device copy. For 'none' no weight sits at a bound.
        at_low = ((w <= 1.0 - eps) & valid).sum() if mode != "none" else torch.zeros_like(n_valid)
        at_high = ((w >= 1.0 + eps) & valid).sum() if mode != "none" else torch.zeros_like(n_valid)
        counts = torch.stack([n_valid, at_low.to(torch.int32), at_high.to(torch.int32)]).double()
        sums = torch.stack([sum_wl.detach(), (loss.detach() * mask).sum(), w.sum()]).double()
        report = torch.stack([sums[0], sums[1], counts[0], sums[2], counts[1], counts[2]])
    return sum_wl, n_valid, report


def summarize(report: torch.Tensor) -> dict[str, float]:
    """Turn a summed report into the logged numbers: weighted and unweighted loss per valid token,
    mean weight and the share of valid tokens at each clip bound."""
    r = dict(zip(STAT_NAMES, report.double().tolist()))
    n = max(r["n_valid"], 1.0)
    return {
        "loss": r["sum_wl"] / n,
        "loss_unweighted": r["sum_l"] / n,
        "mean_weight": r["sum_w"] / n,
        "frac_at_low": r["n_low"] / n,
        "frac_at_high": r["n_high"] / n,
        "valid_tokens": int(r["n_valid"]),
    }
