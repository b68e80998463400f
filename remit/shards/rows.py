"""What a shard's rows are made of, before any scoring: a document's tokens, and a packed row of
document segments. The annotator packs documents into rows (`remit.annotate.packing`); the synthetic
builder (`remit.shards.synthetic`) packs its own the same way; both write rows of this shape.
"""

from __future__ import annotations

from collections.abc import Iterator
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
