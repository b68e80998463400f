"""An annotation output scored by real models (HF forward per segment), without the annotation engine.

Each segment is scored as its own prompt, from its first token, as the annotation does; the weights
come from the real rule and the shards from the real writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from remit import __version__
from remit.annotate.packing import Document, pack
from remit.shards import Rows, build_table, remit_weights, write_json_atomic, write_shard
from remit.shards.manifest import MANIFEST_NAME, assemble_manifest
from remit.shards.weights import RULE


@torch.no_grad()
def _segment_logps(model, tokens: np.ndarray) -> np.ndarray:
    ids = torch.from_numpy(tokens.astype(np.int64))[None]
    logits = model(ids).logits.float()
    lp = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    return np.concatenate([[np.nan], lp.numpy()]).astype(np.float32)


def make_scored_output(
    root: Path,
    base_dir: Path,
    rl_dir: Path,
    tokenizer_sha256: str,
    *,
    n_docs: int = 12,
    seq_len: int = 48,
    eps: float = 0.2,
    center: str = "row",
    seed: int = 0,
) -> Path:
    from transformers import AutoModelForCausalLM

    # eager attention: the per-segment reference the training forward must reproduce, for any architecture
    base = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager", dtype=torch.float32).eval()
    rl = AutoModelForCausalLM.from_pretrained(rl_dir, attn_implementation="eager", dtype=torch.float32).eval()
    vocab = base.config.vocab_size
    rng = np.random.default_rng(seed)
    docs = [
        Document(
            doc_id=f"d{i}",
            source="s.jsonl",
            tokens=np.concatenate([[1], rng.integers(3, vocab, int(rng.integers(4, 70))), [2]]).astype(np.int32),
        )
        for i in range(n_docs)
    ]
    rows = list(pack(docs, seq_len))
    lb_all, lr_all = [], []
    for r in rows:
        lb, lr = np.empty(len(r.tokens), np.float32), np.empty(len(r.tokens), np.float32)
        for a, b in r.segments():
            lb[a:b] = _segment_logps(base, r.tokens[a:b])
            lr[a:b] = _segment_logps(rl, r.tokens[a:b])
        lb_all.append(lb)
        lr_all.append(lr)
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    starts = [np.array(r.segment_starts, np.int32) for r in rows]
    lb, lr = np.concatenate(lb_all), np.concatenate(lr_all)
    rows_ = Rows(
        sample_ids=np.arange(len(rows), dtype=np.int64),
        row_lengths=lengths,
        token_ids=np.concatenate([r.tokens for r in rows]),
        logp_base=lb,
        logp_rl=lr,
        weight=remit_weights(lr, lb, lengths, starts, eps=eps, center=center),
        segment_starts=starts,
        segment_doc_ids=[r.segment_doc_ids for r in rows],
        segment_doc_offsets=[np.array(r.segment_doc_offsets, np.int64) for r in rows],
        sources=[r.source for r in rows],
    )
    root.mkdir(parents=True, exist_ok=True)
    info = write_shard(build_table(rows_, eps), root / "shard-00000.parquet")
    run = {
        "run_id": f"scored-{seed}",
        "remit_version": __version__,
        "config": {"test": True},
        "models": {"base": {"path": str(base_dir)}, "rl": {"path": str(rl_dir)}},
        "tokenizer": {"sha256": tokenizer_sha256, "vocab_size": vocab, "bos_id": 1, "eos_id": 2},
        "engine": {"name": "hf", "dtype": "float32"},
        "packing": {"seq_len": seq_len, "row_tokens": seq_len + 1, "first_token_logp": "nan"},
        "weights": {"eps": eps, "center": center, "rule": RULE},
        "input": {"documents": n_docs},
    }
    write_json_atomic(root / MANIFEST_NAME, assemble_manifest(run, [info.to_dict()]))
    return root
