"""Synthetic annotation outputs for tests and benchmarks that need shards but no scoring engine.

Documents of random length and random token ids are packed with the real packer; log-probs are
random but plausible; weights come from the real rule. The manifest has the real structure, with
placeholder model entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from remit import __version__
from remit.annotate.packing import Document, pack
from remit.shards import Rows, build_table, remit_weights, write_json_atomic, write_shard
from remit.shards.manifest import MANIFEST_NAME, assemble_manifest
from remit.shards.weights import RULE


def make_output(
    root: str | Path,
    *,
    n_docs: int = 40,
    seq_len: int = 64,
    vocab: int = 512,
    eps: float = 0.2,
    center: str = "row",
    rows_per_shard: int = 8,
    doc_len: tuple[int, int] = (3, 150),
    seed: int = 0,
    tokenizer_sha256: str = "sha256:synthetic",
    eos_id: int = 2,
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        n = int(rng.integers(doc_len[0], doc_len[1] + 1))
        toks = rng.integers(3, vocab, n).astype(np.int32)
        toks[-1] = eos_id
        docs.append(Document(doc_id=f"doc-{i}", source=f"part-{i % 3}.jsonl", tokens=toks))
    rows = list(pack(docs, seq_len))
    shards = []
    for first in range(0, len(rows), rows_per_shard):
        chunk = rows[first : first + rows_per_shard]
        lengths = np.array([len(r.tokens) for r in chunk], np.int64)
        tokens = np.concatenate([r.tokens for r in chunk])
        lb = (-rng.gamma(2.0, 1.5, len(tokens))).astype(np.float32)
        lr = np.minimum(lb + rng.normal(0.0, 0.4, len(tokens)), 0.0).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for r, off in zip(chunk, offsets):
            for s in r.segment_starts:
                lb[off + s] = np.nan
                lr[off + s] = np.nan
        starts = [np.array(r.segment_starts, np.int32) for r in chunk]
        w = remit_weights(lr, lb, lengths, starts, eps=eps, center=center)
        batch = Rows(
            sample_ids=np.arange(first, first + len(chunk), dtype=np.int64),
            row_lengths=lengths,
            token_ids=tokens,
            logp_base=lb,
            logp_rl=lr,
            weight=w,
            segment_starts=starts,
            segment_doc_ids=[r.segment_doc_ids for r in chunk],
            segment_doc_offsets=[np.array(r.segment_doc_offsets, np.int64) for r in chunk],
            sources=[r.source for r in chunk],
        )
        info = write_shard(build_table(batch, eps), root / f"shard-{first // rows_per_shard:05d}.parquet")
        shards.append(info.to_dict())
    run = {
        "run_id": f"synthetic-{seed}",
        "remit_version": __version__,
        "config": {"synthetic": True},
        "models": {
            "base": {"path": "synthetic-base", "weights_sha256": "sha256:none", "architecture": "LlamaForCausalLM"},
            "rl": {"path": "synthetic-rl", "weights_sha256": "sha256:none", "architecture": "LlamaForCausalLM"},
        },
        "tokenizer": {
            "sha256": tokenizer_sha256,
            "vocab_size": vocab,
            "bos_id": 1,
            "eos_id": eos_id,
            "add_bos": False,
            "add_eos": True,
            "path": None,
        },
        "engine": {"name": "synthetic", "version": "0", "dtype": "float32", "settings": {}},
        "packing": {"seq_len": seq_len, "row_tokens": seq_len + 1, "first_token_logp": "nan"},
        "weights": {"eps": eps, "center": center, "rule": RULE},
        "input": {"documents": n_docs, "skipped": {}, "last_row_tokens": len(rows[-1].tokens)},
    }
    write_json_atomic(root / MANIFEST_NAME, assemble_manifest(run, shards))
    return root
