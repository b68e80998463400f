"""The synthetic builder packs documents into the rows the annotator's packer makes."""

from __future__ import annotations

import numpy as np
import pytest

from remit.annotate import packing
from remit.shards.synthetic import Document, pack_documents


@pytest.mark.parametrize("seq_len", [1, 7, 32, 200])
def test_rows_match_the_annotators_packer(seq_len):
    rng = np.random.default_rng(seq_len)
    lengths = [int(n) for n in rng.integers(0, 90, 40)] + [seq_len + 1, 0, 2 * (seq_len + 1)]
    docs = [(f"d{i}", f"s{i % 3}", rng.integers(3, 500, n).astype(np.int32)) for i, n in enumerate(lengths)]
    ours = pack_documents([Document(*d) for d in docs], seq_len)
    reference = list(packing.pack([packing.Document(*d) for d in docs], seq_len))
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        assert a.tokens.dtype == b.tokens.dtype
        assert (a.segment_starts, a.segment_doc_ids, a.segment_doc_offsets, a.source) == (
            b.segment_starts,
            b.segment_doc_ids,
            b.segment_doc_offsets,
            b.source,
        )
        assert list(a.segments()) == list(b.segments())
