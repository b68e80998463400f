"""Synthetic annotation outputs, built from the format alone: for tests and benchmarks that need shards
without the annotation pipeline.

- `pack_documents`: documents -> rows of ``seq_len + 1`` tokens cut into segments, as the format lays
  them out (the annotator's packer produces the same rows; a test holds the two together).
- `write_output`: rows -> log-probs from a callback, one call per shard -> weights (the real rule) ->
  shards (the real writer) -> a manifest of the real structure, whose run fields a caller may replace
  (models, tokenizer, engine, ...).
- `random_logprobs`: plausible random log-probs: NaN at segment starts, never positive.
- `make_output`: random documents with random log-probs, for callers that need shards but no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from remit import __version__
from remit.common.atomic import write_json_atomic
from remit.shards.manifest import MANIFEST_NAME, assemble_manifest
from remit.shards.rows import Document, PackedRow
from remit.shards.weights import RULE, Center, remit_weights
from remit.shards.writer import Rows, build_table, write_shard

#: rows of one shard -> their (logp_base, logp_rl), flat, NaN at every segment's first token.
LogProbs = Callable[[list[PackedRow]], tuple[np.ndarray, np.ndarray]]


def pack_documents(documents: Sequence[Document], seq_len: int) -> list[PackedRow]:
    """Concatenate the documents' tokens in order and cut them into rows of ``seq_len + 1`` tokens (the
    last one may be shorter); a segment is the part of one document inside one row."""
    documents = [d for d in documents if len(d.tokens)]
    width = seq_len + 1
    lengths = np.array([len(d.tokens) for d in documents], np.int64)
    doc_ends = np.cumsum(lengths)
    doc_starts = doc_ends - lengths
    tokens = np.concatenate([d.tokens for d in documents]).astype(np.int32, copy=False)
    rows = []
    for row_start in range(0, len(tokens), width):
        row_end = min(row_start + width, len(tokens))
        # The documents that overlap [row_start, row_end).
        inside = range(int(np.searchsorted(doc_ends, row_start, "right")), int(np.searchsorted(doc_starts, row_end)))
        rows.append(
            PackedRow(
                tokens=tokens[row_start:row_end],
                segment_starts=[max(int(doc_starts[i]) - row_start, 0) for i in inside],
                segment_doc_ids=[documents[i].doc_id for i in inside],
                segment_doc_offsets=[max(row_start - int(doc_starts[i]), 0) for i in inside],
                source=documents[inside[0]].source,
            )
        )
    return rows


def segment_starts_mask(rows: Sequence[PackedRow]) -> np.ndarray:
    """True at the first token of every segment of `rows`, flat."""
    mask = np.zeros(sum(len(r.tokens) for r in rows), bool)
    offset = 0
    for r in rows:
        mask[offset + np.asarray(r.segment_starts, np.int64)] = True
        offset += len(r.tokens)
    return mask


def random_logprobs(rng: np.random.Generator) -> LogProbs:
    def draw(rows: list[PackedRow]) -> tuple[np.ndarray, np.ndarray]:
        n = sum(len(r.tokens) for r in rows)
        lb = (-rng.gamma(2.0, 1.5, n)).astype(np.float32)
        lr = np.minimum(lb + rng.normal(0.0, 0.4, n), 0.0).astype(np.float32)
        starts = segment_starts_mask(rows)
        lb[starts] = np.nan
        lr[starts] = np.nan
        return lb, lr

    return draw


def write_output(
    root: str | Path,
    documents: Sequence[Document],
    logprobs: LogProbs,
    *,
    seq_len: int = 64,
    rows_per_shard: int | None = None,
    eps: float = 0.2,
    center: Center = "row",
    run: dict[str, Any] | None = None,
) -> Path:
    """Pack `documents`, score them with `logprobs`, write shards of `rows_per_shard` rows (None: one
    shard) and the manifest. `run` replaces fields of the manifest's run description."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = pack_documents(documents, seq_len)
    per_shard = rows_per_shard or len(rows)
    shards = []
    for first in range(0, len(rows), per_shard):
        chunk = rows[first : first + per_shard]
        lengths = np.array([len(r.tokens) for r in chunk], np.int64)
        starts = [np.array(r.segment_starts, np.int32) for r in chunk]
        lb, lr = logprobs(chunk)
        batch = Rows(
            sample_ids=np.arange(first, first + len(chunk), dtype=np.int64),
            row_lengths=lengths,
            token_ids=np.concatenate([r.tokens for r in chunk]),
            logp_base=lb,
            logp_rl=lr,
            weight=remit_weights(lr, lb, lengths, starts, eps=eps, center=center),
            segment_starts=starts,
            segment_doc_ids=[r.segment_doc_ids for r in chunk],
            segment_doc_offsets=[np.array(r.segment_doc_offsets, np.int64) for r in chunk],
            sources=[r.source for r in chunk],
        )
        info = write_shard(build_table(batch, eps), root / f"shard-{first // per_shard:05d}.parquet")
        shards.append(info.to_dict())
    description = {
        "run_id": f"synthetic-{root.name}",
        "remit_version": __version__,
        "config": {"synthetic": True},
        "models": {
            "base": {"path": "synthetic-base", "weights_sha256": "sha256:none", "architecture": "LlamaForCausalLM"},
            "rl": {"path": "synthetic-rl", "weights_sha256": "sha256:none", "architecture": "LlamaForCausalLM"},
        },
        "tokenizer": {
            "sha256": "sha256:synthetic",
            "vocab_size": None,
            "bos_id": 1,
            "eos_id": 2,
            "add_bos": False,
            "add_eos": True,
            "path": None,
        },
        "engine": {"name": "synthetic", "version": "0", "dtype": "float32", "settings": {}},
        "packing": {"seq_len": seq_len, "row_tokens": seq_len + 1, "first_token_logp": "nan"},
        "weights": {"eps": eps, "center": center, "rule": RULE},
        "input": {"documents": len(documents), "skipped": {}, "last_row_tokens": len(rows[-1].tokens)},
        **(run or {}),
    }
    write_json_atomic(root / MANIFEST_NAME, assemble_manifest(description, shards))
    return root


def make_output(
    root: str | Path,
    *,
    n_docs: int = 40,
    seq_len: int = 64,
    vocab: int = 512,
    eps: float = 0.2,
    center: Center = "row",
    rows_per_shard: int = 8,
    doc_len: tuple[int, int] = (3, 150),
    seed: int = 0,
    tokenizer_sha256: str = "sha256:synthetic",
    eos_id: int = 2,
) -> Path:
    """`n_docs` documents of random length and token ids (each ending in `eos_id`), random log-probs."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        n = int(rng.integers(doc_len[0], doc_len[1] + 1))
        toks = rng.integers(3, vocab, n).astype(np.int32)
        toks[-1] = eos_id
        docs.append(Document(doc_id=f"doc-{i}", source=f"part-{i % 3}.jsonl", tokens=toks))
    tokenizer = {
        "sha256": tokenizer_sha256,
        "vocab_size": vocab,
        "bos_id": 1,
        "eos_id": eos_id,
        "add_bos": False,
        "add_eos": True,
        "path": None,
    }
    return write_output(
        root,
        docs,
        random_logprobs(rng),
        seq_len=seq_len,
        rows_per_shard=rows_per_shard,
        eps=eps,
        center=center,
        run={"run_id": f"synthetic-{seed}", "tokenizer": tokenizer},
    )


__all__ = ["Document", "LogProbs", "PackedRow", "make_output", "pack_documents", "random_logprobs", "write_output"]
