"""Sequence-aligned packing: documents -> rows of exactly ``seq_len + 1`` tokens.

Documents (already carrying their BOS/EOS) are concatenated in corpus order and cut into consecutive,
non-overlapping rows of ``seq_len + 1`` tokens, the window a Megatron training sample takes
(``tokens = row[:-1]``, ``labels = row[1:]``). The last, shorter remainder becomes a final short row.
The part of a document inside one row is a *segment*; each segment is scored as its own prompt, so
its first token has no log-prob. A trainer with document-masked attention and position ids reset at
segment starts sees exactly the scoring context.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Document:
    doc_id: str
    source: str
    tokens: np.ndarray  # int32, BOS/EOS already applied


@dataclass
class PackedRow:
    tokens: np.ndarray  # int32 [<= seq_len + 1]
    segment_starts: list[int] = field(default_factory=list)
    segment_doc_ids: list[str] = field(default_factory=list)
    segment_doc_offsets: list[int] = field(default_factory=list)
    source: str = ""

    def segments(self) -> Iterator[tuple[int, int]]:
        """(start, end) of each segment inside the row."""
        bounds = [*self.segment_starts, len(self.tokens)]
        return zip(bounds[:-1], bounds[1:])


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
