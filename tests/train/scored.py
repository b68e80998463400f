"""An annotation output scored by real models (HF forward per segment), without the annotation engine.

Each segment is scored as its own prompt, from its first token, as the annotation does; the weights
come from the real rule and the shards and manifest from the shared builder (remit/shards/synthetic.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from remit.shards.synthetic import Document, PackedRow, write_output


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

    def score(rows: list[PackedRow]) -> tuple[np.ndarray, np.ndarray]:
        lb_all, lr_all = [], []
        for r in rows:
            lb, lr = np.empty(len(r.tokens), np.float32), np.empty(len(r.tokens), np.float32)
            for a, b in r.segments():
                lb[a:b] = _segment_logps(base, r.tokens[a:b])
                lr[a:b] = _segment_logps(rl, r.tokens[a:b])
            lb_all.append(lb)
            lr_all.append(lr)
        return np.concatenate(lb_all), np.concatenate(lr_all)

    run = {
        "run_id": f"scored-{seed}",
        "config": {"test": True},
        "models": {"base": {"path": str(base_dir)}, "rl": {"path": str(rl_dir)}},
        "tokenizer": {"sha256": tokenizer_sha256, "vocab_size": vocab, "bos_id": 1, "eos_id": 2},
        "engine": {"name": "hf", "dtype": "float32"},
    }
    return write_output(root, docs, score, seq_len=seq_len, eps=eps, center=center, run=run)
