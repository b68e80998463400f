"""Sequence-aligned packing: documents -> rows of exactly ``seq_len + 1`` tokens, and rows -> prompts.

- Documents (already carrying their BOS/EOS) are concatenated in corpus order and cut into
  consecutive, non-overlapping rows of ``seq_len + 1`` tokens, the window a Megatron training sample
  takes (``tokens = row[:-1]``, ``labels = row[1:]``). The remainder becomes a final short row.
- The part of a document inside one row is a *segment*. Each segment is scored as its own prompt
  (`unit_prompts`), so its first token has no log-prob; a trainer with document-masked attention and
  position ids reset at segment starts sees exactly the scoring context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from remit.shards.rows import Document, PackedRow


def pack(documents: Iterable[Document], seq_len: int) -> Iterator[PackedRow]:
    """Yield rows of ``seq_len + 1`` tokens (the last one may be shorter); every token exactly once."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1; got {seq_len}")
    width = seq_len + 1
    parts: list[np.ndarray] = []
    row = PackedRow(tokens=np.zeros(0, np.int32))
    filled = 0
    for doc in documents:
        offset = 0
        n = len(doc.tokens)
        while offset < n:
            take = min(width - filled, n - offset)
            if not row.segment_starts:
                row.source = doc.source
            row.segment_starts.append(filled)
            row.segment_doc_ids.append(doc.doc_id)
            row.segment_doc_offsets.append(offset)
            parts.append(doc.tokens[offset : offset + take])
            filled += take
            offset += take
            if filled == width:
                row.tokens = np.concatenate(parts).astype(np.int32, copy=False)
                yield row
                parts, filled = [], 0
                row = PackedRow(tokens=np.zeros(0, np.int32))
    if filled:
        row.tokens = np.concatenate(parts).astype(np.int32, copy=False)
        yield row


@dataclass(frozen=True)
class UnitPrompts:
    """Packed rows (a planned unit, or rows of a shard) in flat form, and their segments as prompts."""

    tokens: np.ndarray
    """Every row's tokens, concatenated."""
    lengths: np.ndarray
    """Tokens per row (int64)."""
    starts: list[np.ndarray]
    """Per row, the in-row offsets of its segments (int32, the first is 0)."""
    prompts: list[np.ndarray]
    """Every segment's tokens, in token order: each is scored as its own prompt."""


def unit_prompts(table: pa.Table) -> UnitPrompts:
    """The rows of `table` (columns token_ids and segment_starts) and their segment prompts."""
    tokens = pc.list_flatten(table.column("token_ids")).to_numpy()
    lengths = pc.list_value_length(table.column("token_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = [np.asarray(s, np.int32) for s in table.column("segment_starts").to_pylist()]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    prompts: list[np.ndarray] = []
    for off, n, st in zip(offsets, lengths, starts):
        bounds = [*st.tolist(), int(n)]
        prompts.extend(tokens[off + a : off + b] for a, b in zip(bounds[:-1], bounds[1:]))
    return UnitPrompts(tokens, lengths, starts, prompts)
