"""The oracle arm's weights: what pure noise filtering can give, from the generator's labels.

Weight 1 - eps on every token of a wrong annealing solution from its first wrong number (the result of
its first wrong step, or its wrong final number; `data.wrong_from`) to the end of the document,
closing EOS included, and 1.0 everywhere else. No log-prob enters, so the weights go to an
external-weights folder beside the annotation (`remit.shards.external`), which remit-train reads with
`--weights external`; the annotation and its checks stay as they are.

Each segment's stored tokens are compared with the document's own tokenisation before a weight is
placed: a mismatch (another tokenizer, another annealing file) is an error, not a misplaced label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from experiments.flywheel.data import ANNEAL_LABELS, read_jsonl


class OracleError(ValueError):
    """The annotation and the labelled annealing split do not belong together."""


def _document_arrays(tok, text: str, wrong_from: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids with the closing EOS, True where the token lies at or after `wrong_from`)."""
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    ids = np.asarray([*enc["input_ids"], tok.eos_token_id], np.int64)
    if wrong_from is None:
        return ids, np.zeros(len(ids), bool)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]] + [len(text)], np.int64)
    return ids, starts >= wrong_from


def write_oracle_weights(out: Path, annotated: Path, dest: Path, eps: float) -> dict[str, Any]:
    """Write `dest`, the oracle's external weights for the annotation `annotated` of the experiment folder
    `out` (its data/anneal.jsonl, data/anneal_labels.jsonl and tokenizer/); return token counts."""
    from transformers import AutoTokenizer

    from remit.shards import open_output
    from remit.shards.external import write_external

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    texts = {r["id"]: r["text"] for r in read_jsonl(out / "data" / "anneal.jsonl")}
    labels = {r["id"]: r["wrong_from"] for r in read_jsonl(out / "data" / f"{ANNEAL_LABELS}.jsonl")}
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    output = open_output(annotated)
    tokens = down = 0
    documents_down: set[str] = set()
    for index in range(len(output.manifest.shards)):
        table = output.read(index)
        ids, weights = [], []
        for row in table.select(
            ["sample_id", "token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets"]
        ).to_pylist():
            toks = np.asarray(row["token_ids"], np.int64)
            w = np.ones(len(toks), np.float32)
            bounds = [*row["segment_starts"], len(toks)]
            for k, (doc, offset) in enumerate(zip(row["segment_doc_ids"], row["segment_doc_offsets"])):
                if doc not in texts or doc not in labels:
                    raise OracleError(f"{output.path(index)}: document {doc!r} is not in the labelled annealing split")
                if doc not in cache:
                    cache[doc] = _document_arrays(tok, texts[doc], labels[doc])
                doc_ids, doc_down = cache[doc]
                a, b = bounds[k], bounds[k + 1]
                if not np.array_equal(toks[a:b], doc_ids[offset : offset + b - a]):
                    raise OracleError(
                        f"{output.path(index)}: sample {row['sample_id']}'s tokens of {doc!r} differ from the "
                        "document's own tokenisation; annotate the labelled annealing split with the experiment's tokenizer"
                    )
                seg_down = doc_down[offset : offset + b - a]
                w[a:b][seg_down] = 1.0 - eps
                down += int(seg_down.sum())
                if seg_down.any():
                    documents_down.add(doc)
            tokens += len(toks)
            ids.append(row["sample_id"])
            weights.append(w)
        write_external(dest / output.path(index).name, ids, weights)
    return {"tokens": tokens, "tokens_down": down, "documents_down": len(documents_down), "eps": eps}
