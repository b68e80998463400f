"""Tokenize once, with the base model's tokenizer; refuse an RL model whose tokenizer differs.

- Texts are encoded without special tokens; BOS/EOS come from the run's explicit policy (``bos``:
  auto/always/never, ``eos``: always/never), never from the tokenizer's own template, so the manifest
  says exactly what each document's token stream starts and ends with.
- Texts are encoded in batches; documents come out in input order, with the skips between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from remit.annotate.inputs import Item, Record, Skip
from remit.annotate.packing import Document
from remit.shards.tokenizer_hash import canonical_tokenizer, tokenizer_hash

BosPolicy = Literal["auto", "always", "never"]
EosPolicy = Literal["always", "never"]
_TOKENIZE_BATCH = 256


class TokenizerMismatch(ValueError):
    pass


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:
        raise ValueError(
            f"{model_dir}: cannot load a tokenizer ({type(e).__name__}: {e}). The model folder must hold "
            "tokenizer.json or the files of a transformers tokenizer."
        ) from e


def explain_mismatch(base, rl) -> str:
    a, b = canonical_tokenizer(base), canonical_tokenizer(rl)
    reasons = []
    va, vb = base.get_vocab(), rl.get_vocab()
    if len(va) != len(vb):
        reasons.append(f"vocabulary sizes differ ({len(va)} vs {len(vb)})")
    diff = sum(1 for k, v in va.items() if vb.get(k) != v)
    if diff:
        reasons.append(f"{diff} tokens map to different ids")
    if a.get("special_tokens") != b.get("special_tokens"):
        reasons.append(f"special tokens differ ({a.get('special_tokens')} vs {b.get('special_tokens')})")
    ma = a.get("backend", {}).get("model", {}).get("merges")
    mb = b.get("backend", {}).get("model", {}).get("merges")
    if ma != mb:
        reasons.append("BPE merges differ")
    if a.get("backend", {}).get("added_tokens") != b.get("backend", {}).get("added_tokens"):
        reasons.append("added tokens differ")
    if not reasons:
        reasons.append("normalizer, pre-tokenizer or another part of the tokenizer definition differs")
    return "; ".join(reasons)


def check_same_tokenizer(base, rl, base_dir: Path, rl_dir: Path) -> str:
    """Return the shared hash, or raise TokenizerMismatch saying what differs and what to do."""
    h_base, h_rl = tokenizer_hash(base), tokenizer_hash(rl)
    if h_base != h_rl:
        raise TokenizerMismatch(
            f"the tokenizers of the base model ({base_dir}) and the RL model ({rl_dir}) differ: "
            f"{explain_mismatch(base, rl)}. ReMiT compares the two models' log-probs of the same token ids, "
            "so both must use one tokenizer. Point --rl at the RL-tuned sibling of --base."
        )
    return h_base


@dataclass(frozen=True)
class SpecialTokens:
    """The resolved BOS/EOS policy of a run (recorded in the manifest)."""

    add_bos: bool
    add_eos: bool
    bos_id: int | None
    eos_id: int | None
    vocab_size: int

    @classmethod
    def resolve(cls, tokenizer: Any, bos: BosPolicy, eos: EosPolicy) -> SpecialTokens:
        if bos not in get_args(BosPolicy):
            raise ValueError(f"bos must be one of {get_args(BosPolicy)}; got {bos!r}")
        if eos not in get_args(EosPolicy):
            raise ValueError(f"eos must be one of {get_args(EosPolicy)}; got {eos!r}")
        bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        if bos == "auto":
            # Follow the tokenizer's own template: does it put BOS in front of plain text?
            ids = tokenizer("a", add_special_tokens=True)["input_ids"]
            add_bos = bos_id is not None and len(ids) > 0 and ids[0] == bos_id
        else:
            add_bos = bos == "always"
        if add_bos and bos_id is None:
            raise ValueError("--bos always, but the tokenizer has no BOS token; use --bos never")
        add_eos = eos == "always"
        if add_eos and eos_id is None:
            raise ValueError(
                "--eos always, but the tokenizer has no EOS token; documents could not be delimited when "
                "packed. Use a tokenizer with an EOS token, or --eos never."
            )
        return cls(add_bos, add_eos, bos_id, eos_id, len(tokenizer))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def wrap(self, ids: np.ndarray) -> np.ndarray:
        parts = []
        if self.add_bos:
            parts.append(np.array([self.bos_id], np.int32))
        parts.append(ids.astype(np.int32, copy=False))
        if self.add_eos:
            parts.append(np.array([self.eos_id], np.int32))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def tokenize_records(items: Iterable[Item], tokenizer, special: SpecialTokens) -> Iterator[Document | Skip]:
    """Documents (token ids with BOS/EOS applied) and Skips, in input order; texts are encoded in batches."""
    pending: list[Record] = []

    def flush() -> Iterator[Document | Skip]:
        texts = [r.text for r in pending if r.text is not None]
        encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
        for r in pending:
            if r.text is not None:
                ids = np.asarray(next(encoded), np.int64)
            elif r.tokens is not None:
                ids = r.tokens
            else:
                raise RuntimeError(f"{r.source} record {r.index}: read with neither text nor token ids")
            yield from _document(r, ids, special)
        pending.clear()

    for item in items:
        if isinstance(item, Skip):
            yield from flush()
            yield item
            continue
        pending.append(item)
        if len(pending) >= _TOKENIZE_BATCH:
            yield from flush()
    yield from flush()


def _document(r: Record, ids: np.ndarray, special: SpecialTokens) -> Iterator[Document | Skip]:
    if len(ids) == 0:
        yield Skip(r.source, r.index, f"empty document {r.doc_id!r}", "empty document")
        return
    bad = np.flatnonzero((ids < 0) | (ids >= special.vocab_size))
    if len(bad):
        yield Skip(
            r.source,
            r.index,
            f"document {r.doc_id!r}: token id {int(ids[bad[0]])} at position {int(bad[0])} is outside the "
            f"tokenizer's vocabulary [0, {special.vocab_size})",
            "token id out of range",
        )
        return
    yield Document(doc_id=r.doc_id, source=r.source, tokens=special.wrap(ids))
