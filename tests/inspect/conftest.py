"""Fixtures for the inspection tests: small synthetic outputs (no models, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import make_output


@pytest.fixture(scope="session")
def small_output(tmp_path_factory) -> Path:
    """~5k tokens in 8 shards; a small vocabulary so that token ids repeat often enough for top lists."""
    return make_output(
        tmp_path_factory.mktemp("inspect") / "out", n_docs=70, seq_len=64, vocab=60, rows_per_shard=12, seed=3
    )


@pytest.fixture(scope="session")
def segment_output(tmp_path_factory) -> Path:
    """Segment-centred weights and another eps, to check the views read eps from the manifest."""
    return make_output(
        tmp_path_factory.mktemp("inspect") / "seg",
        n_docs=30,
        seq_len=32,
        vocab=40,
        eps=0.1,
        center="segment",
        rows_per_shard=16,
        seed=5,
    )


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

    from remit import __version__
    from remit.annotate.packing import Document, pack
    from remit.shards import Rows, build_table, remit_weights, write_json_atomic, write_shard
    from remit.shards.manifest import MANIFEST_NAME, assemble_manifest
    from remit.shards.tokenizer_hash import tokenizer_hash
    from remit.shards.weights import RULE

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    rng = np.random.default_rng(seed)
    documents = [
        Document(doc_id=d, source=s, tokens=np.array(tok.encode(t) + [tok.eos_token_id], np.int32)) for d, s, t in docs
    ]
    rows = list(pack(documents, seq_len))
    lengths = np.array([len(r.tokens) for r in rows], np.int64)
    tokens = np.concatenate([r.tokens for r in rows])
    lb = (-rng.gamma(2.0, 1.5, len(tokens))).astype(np.float32)
    lr = (lb + rng.normal(0.0, 0.4, len(tokens))).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for r, off in zip(rows, offsets):
        lb[off + np.array(r.segment_starts)] = np.nan
        lr[off + np.array(r.segment_starts)] = np.nan
    starts = [np.array(r.segment_starts, np.int32) for r in rows]
    batch = Rows(
        sample_ids=np.arange(len(rows), dtype=np.int64),
        row_lengths=lengths,
        token_ids=tokens,
        logp_base=lb,
        logp_rl=lr,
        weight=remit_weights(lr, lb, lengths, starts, eps=eps),
        segment_starts=starts,
        segment_doc_ids=[r.segment_doc_ids for r in rows],
        segment_doc_offsets=[np.array(r.segment_doc_offsets, np.int64) for r in rows],
        sources=[r.source for r in rows],
    )
    root.mkdir(parents=True, exist_ok=True)
    info = write_shard(build_table(batch, eps), root / "shard-00000.parquet")
    run = {
        "run_id": "text-output",
        "remit_version": __version__,
        "config": {"note": "<b>not bold</b> & co"},
        "models": {"base": {"path": "base"}, "rl": {"path": "rl"}},
        "tokenizer": {
            "sha256": tokenizer_hash(tok),
            "vocab_size": len(tok),
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "add_bos": False,
            "add_eos": True,
            "path": str(tokenizer_dir),
        },
        "engine": {"name": "synthetic", "version": "0", "dtype": "float32", "settings": {}},
        "packing": {"seq_len": seq_len, "row_tokens": seq_len + 1, "first_token_logp": "nan"},
        "weights": {"eps": eps, "center": "row", "rule": RULE},
        "input": {"documents": len(docs), "skipped": {}, "last_row_tokens": int(lengths[-1])},
    }
    write_json_atomic(root / MANIFEST_NAME, assemble_manifest(run, [info.to_dict()]))
    return root


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
