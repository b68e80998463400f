"""Document-masked causal attention for packed rows: each token attends only to earlier tokens of its own
document (and, in sliding-window layers, only to the last `window` of them, itself included).

Backends (`--attention`):

- ``sdpa`` (the default, ``auto``): `SDPADocumentAttention`, a core-attention module in
  mcore's local layer spec. Documents of similar length are gathered into padded batches and run through
  torch ``scaled_dot_product_attention`` with ``is_causal=True``, so no mask and no score matrix is ever
  materialised: the flash kernel (CPU, or GPU in bf16) or the memory-efficient kernel (GPU in fp32) keeps
  memory linear in the sequence length. Right-padding a document is exact under a causal mask (a real
  query never sees a later, padded key). Sliding-window layers split a long document into query blocks of
  `window` tokens, each attending to a band of 2 * `window` keys with a small block mask. The math
  kernel, which would materialise scores, is never allowed.
- ``dense``: `DenseDocumentAttention`, mcore's own DotProductAttention with a dense ``[b, 1, S, S]``
  document (and window) mask. It stores per-head S x S scores; it is the reference the tests compare to.
- ``te`` (by name only): Transformer Engine's layer spec with packed sequences (``qkv_format="thd"``,
  ``cu_seqlens`` from the document starts); the TE kernels then restart attention and RoPE at every
  document, with TE's fused RoPE where the installed TE has it. A micro-batch is one packed row of b*S
  tokens, so with pipeline stages (which pass [S, b, h] activations between stages) it needs b = 1.

The local backends take the segment ids ``[b, S]`` where mcore passes an attention mask. Documents are
maximal runs of equal segment id in a row (the padding of a short last row, segment id -1, is one run).
mcore's local softmax *replaces* any mask by a plain sliding-window mask when ``config.window_size`` is set
(``FusedScaleMaskSoftmax.forward_torch_softmax``), which would drop the document mask. So the local
backends never set ``config.window_size``: each module reads its layer's window from the architecture.
"""

from __future__ import annotations

import importlib.util
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from remit.common.requires import install_hint
from remit.train.config import ATTENTION_BACKENDS


def te_available() -> bool:
    """Transformer Engine importable and a GPU to run it on."""
    try:
        found = importlib.util.find_spec("transformer_engine") is not None
    except (ImportError, ValueError):
        found = False
    return found and torch.cuda.is_available()


#: The card on which the `te` backend's GPU tests last passed (tests/train marked gpu); None: not yet on any.
#: Until then `te` is offered by name only, with a note at start-up.
TE_VERIFIED_ON: str | None = None


def resolve_backend(name: str) -> str:
    """The backend `name` ('auto' -> 'sdpa', the backend every test runs; 'te' only by name)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention: unknown backend {name!r}; use one of {', '.join(ATTENTION_BACKENDS)}")
    if name == "auto":
        return "sdpa"
    if name == "te" and not te_available():
        raise ValueError(
            f"attention: 'te' needs Transformer Engine and a CUDA GPU ({install_hint('transformer-engine')}); "
            "use --attention sdpa without it"
        )
    return name


def backend_note(backend: str) -> str | None:
    """The one line printed at start-up for a backend that has not been verified on a GPU, else None."""
    if backend != "te" or TE_VERIFIED_ON is not None:
        return None
    return (
        "remit-train: note: --attention te has not been verified on a GPU yet (its GPU tests have not run on a "
        "real card); --attention sdpa is the verified path"
    )


def rope_fusion_available() -> bool:
    """Megatron-Core found Transformer Engine's fused RoPE for packed (THD) rows: mcore imports it as None
    where the installed Transformer Engine lacks it."""
    try:
        from megatron.core.models.common.embeddings import rope_utils
    except ImportError:
        return False
    return getattr(rope_utils, "fused_apply_rotary_pos_emb_thd", None) is not None


# --- documents of a micro-batch -------------------------------------------------------------------


def document_ids(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, S] index of each token's document within its row: a new document starts wherever the
    segment id changes."""
    change = torch.zeros_like(segment_ids, dtype=torch.long)
    change[:, 1:] = (segment_ids[:, 1:] != segment_ids[:, :-1]).long()
    return change.cumsum(1)


def document_lengths(segment_ids: torch.Tensor) -> np.ndarray:
    """Lengths of the documents of the flattened (row-major) micro-batch, in order (host numpy)."""
    seg = segment_ids.detach().cpu().numpy()
    b, s = seg.shape
    start = np.ones((b, s), dtype=bool)
    start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    starts = np.flatnonzero(start.reshape(-1))
    return np.diff(np.append(starts, b * s))


def dense_document_mask(segment_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """mcore's bool mask [b, 1, S, S], True = masked: causal, within one document, and within `window`."""
    s = segment_ids.shape[-1]
    pos = torch.arange(s, device=segment_ids.device)
    dist = pos[:, None] - pos[None, :]  # query - key
    blocked = dist < 0
    if window is not None:
        blocked = blocked | (dist >= window)
    doc = document_ids(segment_ids)
    return (blocked[None] | (doc[:, :, None] != doc[:, None, :]))[:, None]


def packed_seq_params(segment_ids: torch.Tensor):
    """mcore `PackedSeqParams` (THD format) for the micro-batch flattened into one row of b*S tokens."""
    from megatron.core.packed_seq_params import PackedSeqParams

    lengths = document_lengths(segment_ids)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)).to(segment_ids.device)
    longest = int(lengths.max())
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
    )


@dataclass
class _Bucket:
    index: torch.Tensor  # [n, L] flat token index per (document, position); T (a zero row) where padded
    valid: torch.Tensor  # [n, L] bool
    length: int  # L, the longest document of the bucket


def _buckets(segment_ids: torch.Tensor) -> list[_Bucket]:
    """Documents grouped by length (powers of two): each group becomes one padded SDPA batch, so the
    padding stays under 2x the document lengths and the number of kernel calls under log2(S) + 1."""
    lengths = document_lengths(segment_ids)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total = int(lengths.sum())
    group = np.ceil(np.log2(lengths)).astype(np.int64)
    out = []
    for g in np.unique(group):
        sel = group == g
        lens, st = lengths[sel], starts[sel]
        longest = int(lens.max())
        offs = np.arange(longest)
        valid = offs[None, :] < lens[:, None]
        index = np.where(valid, st[:, None] + offs[None, :], total)
        out.append(
            _Bucket(
                index=torch.from_numpy(index).to(segment_ids.device),
                valid=torch.from_numpy(valid).to(segment_ids.device),
                length=longest,
            )
        )
    return out


class _PlanCache:
    """The bucket plan of the micro-batch whose segment ids are being run: computed by the first layer,
    reused by the others (and by recomputation), keyed by the identity of the segment-id tensor and its
    version counter (which every in-place write bumps, so ids edited in place get a new plan)."""

    def __init__(self) -> None:
        self._ref: Any = None
        self._version = -1
        self._plan: list[_Bucket] = []

    def get(self, segment_ids: torch.Tensor) -> list[_Bucket]:
        if segment_ids.is_inference():  # no version counter to tell an in-place write: plan every call
            return _buckets(segment_ids)
        if self._ref is None or self._ref() is not segment_ids or self._version != segment_ids._version:
            self._plan = _buckets(segment_ids)
            self._ref = weakref.ref(segment_ids)
            self._version = segment_ids._version
        return self._plan


_PLANS = _PlanCache()


# --- attention kernels ----------------------------------------------------------------------------


def _allowed_kernels() -> list:
    """Kernels that never materialise the score matrix (the math kernel would)."""
    from torch.nn.attention import SDPBackend

    if torch.cuda.is_available():
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION]


def _sdpa(q, k, v, *, mask=None, causal=False, scale: float, dropout: float) -> torch.Tensor:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_allowed_kernels()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, dropout_p=dropout)


def _band_mask(chunks: int, window: int, device: torch.device) -> torch.Tensor:
    """[chunks, 1, W, 2W] bool, True = attend: query i of a block sees band keys j with i < j <= i + W
    (key j of block c is token c*W - W + j); block 0's first W band keys lie before the document."""
    i = torch.arange(window, device=device)[:, None]
    j = torch.arange(2 * window, device=device)[None, :]
    band = (j > i) & (j <= i + window)
    mask = band[None].repeat(chunks, 1, 1)
    mask[0, :, :window] = False
    return mask[:, None]


def _windowed_causal(q, k, v, window: int, *, scale: float, dropout: float) -> torch.Tensor:
    """Exact sliding-window causal attention of [n, h, L, d] documents in query blocks of `window`."""
    n, h, length, d = q.shape
    chunks = math.ceil(length / window)
    padded = chunks * window
    qc = F.pad(q, (0, 0, 0, padded - length)).view(n, h, chunks, window, d)
    # Keys and values with `window` zero rows in front: block c's band is rows [c*W, c*W + 2W).
    kp = F.pad(k, (0, 0, window, padded - length)).unfold(2, 2 * window, window).transpose(-1, -2)
    vp = F.pad(v, (0, 0, window, padded - length)).unfold(2, 2 * window, window).transpose(-1, -2)

    def blocks(t: torch.Tensor) -> torch.Tensor:  # [n, h, chunks, m, d] -> [n * chunks, h, m, d]
        return t.permute(0, 2, 1, 3, 4).reshape(n * chunks, h, t.shape[3], d)

    mask = _band_mask(chunks, window, q.device).repeat(n, 1, 1, 1)
    out = _sdpa(blocks(qc), blocks(kp), blocks(vp), mask=mask, scale=scale, dropout=dropout)
    return out.view(n, chunks, h, window, d).permute(0, 2, 1, 3, 4).reshape(n, h, padded, d)[:, :, :length]


def document_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segment_ids: torch.Tensor,
    *,
    window: int | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Document-causal attention in mcore's layout: q [S, b, nh, d], k and v [S, b, ng, d] -> [S, b, nh * d]."""
    s, b, nh, d = query.shape
    ng = key.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    total = b * s

    def flat(t: torch.Tensor) -> torch.Tensor:  # [S, b, heads, d] -> [b*S + 1, nh, d], a zero row last
        t = t.transpose(0, 1).reshape(total, t.shape[2], d)
        if t.shape[1] != nh:  # grouped-query attention: query heads of a group are adjacent, as in mcore
            t = t.repeat_interleave(nh // ng, dim=1)
        return torch.cat([t, t.new_zeros(1, nh, d)])

    qf, kf, vf = flat(query), flat(key), flat(value)
    outputs, order = [], []
    for bucket in _PLANS.get(segment_ids):
        q, k, v = (t[bucket.index].transpose(1, 2) for t in (qf, kf, vf))  # [n, nh, L, d]
        if window is not None and bucket.length > window:
            o = _windowed_causal(q, k, v, window, scale=scale, dropout=dropout)
        else:
            o = _sdpa(q, k, v, causal=True, scale=scale, dropout=dropout)
        outputs.append(o.transpose(1, 2)[bucket.valid])  # [tokens of the bucket, nh, d]
        order.append(bucket.index[bucket.valid])
    inverse = torch.empty(total, dtype=torch.long, device=query.device)
    order_all = torch.cat(order)
    inverse[order_all] = torch.arange(total, device=query.device)
    out = torch.cat(outputs)[inverse]  # back to row-major token order
    return out.view(b, s, nh * d).transpose(0, 1).contiguous()


# --- mcore core-attention modules -----------------------------------------------------------------


def _segments(mask: Any, query: torch.Tensor) -> torch.Tensor:
    s, b = query.shape[0], query.shape[1]
    if not isinstance(mask, torch.Tensor) or mask.dtype.is_floating_point or tuple(mask.shape) != (b, s):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(
            f"attention_mask: document attention takes the integer segment ids [b={b}, s={s}] of the "
            f"micro-batch in place of a mask, got {got}; pass batch['segment_ids']"
        )
    return mask


def _layer_window(windows: tuple[int | None, ...], layer_number: int) -> int | None:
    return windows[max(1, layer_number) - 1]


class SDPADocumentAttention(torch.nn.Module):
    """mcore core attention (``SelfAttentionSubmodules.core_attention``) running `document_attention`.

    Built by SelfAttention with mcore's core-attention arguments; `windows` (per layer, from the
    architecture) is bound in the layer spec.
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        *,
        windows: tuple[int | None, ...],
    ) -> None:
        super().__init__()
        if config.context_parallel_size != 1:
            raise ValueError("context_parallel_size: the sdpa document attention runs without context parallelism")
        self.config = config
        self.window = _layer_window(windows, layer_number)
        self.softmax_scale = softmax_scale
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("attention: the sdpa backend takes segment ids, not an attention bias or packed params")
        return document_attention(
            query,
            key,
            value,
            _segments(attention_mask, query),
            window=self.window,
            scale=self.softmax_scale,
            dropout=self.dropout if self.training else 0.0,
        )

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None) -> dict:
        return {}  # no parameters or buffers


def dense_attention_class():
    """`DenseDocumentAttention`, defined on first use (mcore is an optional dependency)."""
    global _Dense
    if _Dense is not None:
        return _Dense
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class DenseDocumentAttention(DotProductAttention):
        """mcore's DotProductAttention with a dense [b, 1, S, S] document (and window) mask built from the
        segment ids: the reference that stores per-head S x S scores."""

        def __init__(self, *args, windows: tuple[int | None, ...], **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.window = _layer_window(windows, self.layer_number)

        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):  # fmt: skip
            mask = dense_document_mask(_segments(attention_mask, query), self.window)
            return super().forward(query, key, value, mask, attn_mask_type, attention_bias, packed_seq_params)

    _Dense = DenseDocumentAttention
    return _Dense


_Dense: Any = None
