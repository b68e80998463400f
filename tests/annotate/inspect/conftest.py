"""Fixtures for the inspection tests: outputs of real texts with a real tokenizer (no models, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from remit.shards.synthetic import random_logprobs, write_output

EVIL_TEXT = "<script>alert(\"x & y')</script> Tom & Jerry say \"hi\" & 'bye' <b>bold?</b>\n"
EVIL_DOC_ID = "doc<script>\"&'1"
EVIL_SOURCE = "in/<i>src</i>&.jsonl"


def make_text_output(
    root: Path,
    docs: list[tuple[str, str, str]],
    tokenizer_dir: Path,
    *,
    seq_len: int = 48,
    eps: float = 0.2,
    seed: int = 0,
) -> Path:
    """An output whose tokens come from real texts: `docs` are (doc_id, source, text), tokenized with the
    tokenizer saved in `tokenizer_dir` (recorded in the manifest). Log-probs are random."""
    import numpy as np
    from transformers import AutoTokenizer

    from remit.shards.synthetic import Document
    from remit.shards.tokenizer_hash import tokenizer_hash

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    documents = [
        Document(doc_id=d, source=s, tokens=np.array(tok.encode(t) + [tok.eos_token_id], np.int32)) for d, s, t in docs
    ]
    tokenizer = {
        "sha256": tokenizer_hash(tok),
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "add_bos": False,
        "add_eos": True,
        "path": str(tokenizer_dir),
    }
    run = {"run_id": "text-output", "config": {"note": "<b>not bold</b> & co"}, "tokenizer": tokenizer}
    return write_output(
        root, documents, random_logprobs(np.random.default_rng(seed)), seq_len=seq_len, eps=eps, run=run
    )


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE tokenizer trained on the bundled sample corpus, saved to a folder."""
    from remit.annotate.demo import corpus_texts, train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus_texts(), vocab_size=400).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def text_output(tmp_path_factory, tokenizer_dir: Path) -> Path:
    """Real text, including a document full of markup, quotes and ampersands."""
    from remit.annotate.demo import corpus_texts

    texts = corpus_texts()[:6]
    docs = [(f"plain-{i}", f"part-{i % 2}.jsonl", t[:300]) for i, t in enumerate(texts)]
    docs.insert(0, (EVIL_DOC_ID, EVIL_SOURCE, EVIL_TEXT))  # first: its source is the first row's
    return make_text_output(tmp_path_factory.mktemp("inspect") / "text", docs, tokenizer_dir)
