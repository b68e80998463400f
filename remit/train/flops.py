"""Model FLOPs of a training step on packed rows, GPU peak throughputs, and MFU.

- Matrix multiplies: 2 FLOPs per multiply-add, so a forward pass costs 2 x (weights in matrix
  multiplies) per token and a training step (forward + backward) 3 x that: the 6N of Megatron-LM's
  and PaLM's counts. Counted from the `Architecture`: q and o with `num_heads` heads, k and v with
  `num_kv_heads` (grouped-query attention), the SwiGLU MLP's gate, up and down, and the output layer
  (vocabulary x hidden, tied to the embedding or not: it is a matrix multiply either way).
- Not counted: the input embedding (a row lookup, no multiply-add; Megatron-LM leaves it out too), norms,
  RoPE, softmax, SwiGLU's element-wise product, biases, the loss. Activation recompute is not counted
  either: these are model FLOPs (MFU), not hardware FLOPs.
- Attention core (QK^T and PV): 2 matrix multiplies of head_dim per (query, key) pair and query head,
  so 4 x head_dim x num_heads FLOPs per pair per layer forward. Attention is causal within each document
  of a packed row, so a document of L tokens has L(L+1)/2 pairs (about L^2/2), and a row costs the sum
  over its documents, not S^2; a sliding-window layer of window W has sum_i min(i+1, W) pairs.
- Padding (segment id -1, only on an output's last row) is neither a token nor a document here.
- Peaks: dense (no sparsity) tensor-core bf16 and plain fp32 throughputs from the vendor datasheets,
  matched by the name `torch.cuda.get_device_name()` reports. A card not in the table has no peak
  (None): pass one explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from remit.train.architecture import Architecture

if TYPE_CHECKING:
    import torch

#: Segment id of padding positions (remit.train.dataset.make_sample).
PADDING_SEGMENT = -1


# --- FLOPs --------------------------------------------------------------------------------------------


def matmul_params(arch: Architecture) -> int:
    """Weights that take part in a matrix multiply for every token: the layers' projections and MLPs
    plus the output layer (the input embedding, a lookup, is not one)."""
    h, d = arch.hidden_size, arch.head_dim
    q_and_o = 2 * h * arch.num_heads * d
    k_and_v = 2 * h * arch.num_kv_heads * d
    mlp = 3 * h * arch.ffn_hidden_size  # gate, up, down
    return arch.num_layers * (q_and_o + k_and_v + mlp) + arch.vocab_size * h


def attention_pairs(doc_lengths: Sequence[int] | np.ndarray, window: int | None = None) -> int:
    """(query, key) pairs of causal attention within each document: L(L+1)/2 for a document of L
    tokens; with a sliding window of W tokens (a query sees itself and W - 1 earlier ones),
    W(W+1)/2 + (L - W) W once L > W."""
    lengths = np.asarray(doc_lengths, dtype=np.int64).reshape(-1)
    if (lengths < 0).any():
        raise ValueError(f"doc_lengths: negative length {int(lengths.min())}; lengths count tokens")
    if window is None:
        return int((lengths * (lengths + 1) // 2).sum())
    if window < 1:
        raise ValueError(f"window: {window}; a sliding window holds at least one token")
    inside = np.minimum(lengths, window)
    return int((inside * (inside + 1) // 2 + (lengths - inside) * window).sum())


def attention_flops(arch: Architecture, doc_lengths: Sequence[int] | np.ndarray) -> float:
    """FLOPs of QK^T and PV of one forward pass over documents of `doc_lengths`, every layer (its own
    window where it has one)."""
    per_pair = 4 * arch.head_dim * arch.num_heads
    pairs: dict[int | None, int] = {}
    for w in arch.windows:
        if w not in pairs:
            pairs[w] = attention_pairs(doc_lengths, w)
    return float(per_pair * sum(pairs[w] for w in arch.windows))


def forward_flops(arch: Architecture, doc_lengths: Sequence[int] | np.ndarray) -> float:
    """Model FLOPs of one forward pass over documents of `doc_lengths` (all rows of a batch, flat):
    2 x `matmul_params` per token plus the causal attention within each document."""
    tokens = int(np.asarray(doc_lengths, dtype=np.int64).sum())
    return 2.0 * matmul_params(arch) * tokens + attention_flops(arch, doc_lengths)


def step_flops(arch: Architecture, doc_lengths: Sequence[int] | np.ndarray) -> float:
    """Model FLOPs of one training step over documents of `doc_lengths`: forward + backward = 3 x the
    forward pass (the backward pass multiplies twice: by the weights and for the weight gradients)."""
    return 3.0 * forward_flops(arch, doc_lengths)


def doc_lengths_from_segments(segment_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Lengths of the documents of a [b, S] (or [S]) array or tensor of segment ids, row by row: each
    maximal run of equal id within a row is a document; runs of `PADDING_SEGMENT` are left out."""
    if isinstance(segment_ids, np.ndarray):
        seg = segment_ids
    else:  # a torch tensor, wherever it lives (a device tensor costs a copy to the host)
        seg = segment_ids.detach().cpu().numpy()
    if seg.ndim == 1:
        seg = seg[None]
    if seg.ndim != 2:
        raise ValueError(f"segment_ids: shape {seg.shape}; expected [batch, seq_len] or [seq_len]")
    b, s = seg.shape
    if s == 0:
        return np.zeros(0, np.int64)
    start = np.ones((b, s), dtype=bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    flat_starts = np.flatnonzero(start.reshape(-1))
    lengths = np.diff(np.append(flat_starts, b * s))
    return lengths[seg.reshape(-1)[flat_starts] != PADDING_SEGMENT].astype(np.int64)


# --- peaks and MFU ------------------------------------------------------------------------------------

#: (substring of torch.cuda.get_device_name(), bf16 dense tensor-core TFLOP/s, fp32 TFLOP/s), first match
#: wins, so a more specific name comes before the name it contains. Source: vendor datasheet, dense, no
#: sparsity; fp32 is the plain (non-tensor-core, non-TF32) rate, what torch's fp32 matmuls run at by
#: default. The A10G (AWS) is left out: it is not an A10 (its tensor rate is lower) and no vendor datasheet
#: gives its figures.
PEAKS: tuple[tuple[str, float | None, float | None], ...] = (
    ("H100 PCIe", 756.5, 51.2),
    ("H100 NVL", 835.5, 60.0),
    ("H100", 989.4, 66.9),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.4, 66.9),  # also GH200
    ("A100", 312.0, 19.5),  # SXM and PCIe
    ("L40S", 362.1, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", None, None),
    ("A10", 125.0, 31.2),
)

DTYPES = ("bf16", "fp32")


def peak_tflops(device_name: str, dtype: str = "bf16", override: float | None = None) -> float | None:
    """The device's peak in TFLOP/s for `dtype` ('bf16' or 'fp32'): `override` when given, else from
    `PEAKS` by name; None for a device not in the table."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r}; use one of {', '.join(DTYPES)}")
    if override is not None:
        if override <= 0:
            raise ValueError(f"peak TFLOP/s: {override}; give the device's peak, a positive number")
        return float(override)
    for name, bf16, fp32 in PEAKS:
        if name in device_name:
            return bf16 if dtype == "bf16" else fp32
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: `flops` done in `seconds` over a peak of `peak` TFLOP/s (None: unknown)."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)


__all__ = [
    "PEAKS",
    "attention_flops",
    "attention_pairs",
    "doc_lengths_from_segments",
    "forward_flops",
    "matmul_params",
    "mfu",
    "peak_tflops",
    "step_flops",
]
