"""The corpus cut into units: rows and sample ids, statistics, skipped records, the manifest's descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remit.annotate.inputs import Fields
from remit.annotate.progress import Progress
from remit.annotate.tokenize import SpecialTokens, load_tokenizer
from remit.annotate.units import (
    CorpusStats,
    StrictInputError,
    corpus_units,
    input_description,
    open_corpus,
    packing_description,
)

SEQ_LEN = 16


def _corpus(folder: Path, texts: list[str]) -> Path:
    path = folder / "docs.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)]
    path.write_text("\n".join([*lines, "not json"]) + "\n")
    return path


def _units(model_pair, tmp_path: Path, texts: list[str], *, rows_per_shard: int = 3, strict: bool = False):
    path = _corpus(tmp_path, texts)
    fields = Fields()
    scan = open_corpus([path], tmp_path / "out", fields, [])
    tok = load_tokenizer(model_pair[0])
    stats = CorpusStats()
    units = corpus_units(
        scan,
        fields,
        tok,
        SpecialTokens.resolve(tok, "auto", "always"),
        seq_len=SEQ_LEN,
        rows_per_shard=rows_per_shard,
        strict=strict,
        stats=stats,
        progress=Progress("test", unit="tok", every_s=1000.0),
        label=None,
    )
    return units, stats


def test_units_hold_consecutive_rows_and_the_stats_count_them(model_pair, tmp_path):
    texts = [f"document {i}: " + "the answer is 42, so " * (i + 1) for i in range(8)]
    units, stats = _units(model_pair, tmp_path, texts)
    got = list(units)
    assert [u.unit for u in got] == list(range(len(got))) and len(got) > 1
    assert all(len(u.rows) == 3 for u in got[:-1]) and 1 <= len(got[-1].rows) <= 3
    assert [u.first_sample_id for u in got] == [3 * n for n in range(len(got))]
    rows = [r for u in got for r in u.rows]
    assert all(len(r.tokens) == SEQ_LEN + 1 for r in rows[:-1])
    tokens = int(sum(len(r.tokens) for r in rows))
    assert (stats.documents, stats.tokens, stats.rows, stats.units) == (8, tokens, len(rows), len(got))
    assert stats.last_row_tokens == len(rows[-1].tokens)
    assert stats.skipped == {"invalid JSON": 1} and len(stats.skip_examples) == 1


def test_no_usable_document_and_strict_are_errors(model_pair, tmp_path):
    units, _ = _units(model_pair, tmp_path, [])
    with pytest.raises(ValueError, match="no usable documents in the inputs"):
        list(units)
    units, _ = _units(model_pair, tmp_path, ["fine"], strict=True)
    with pytest.raises(StrictInputError, match="--strict"):
        list(units)


def test_the_manifest_descriptions_of_a_scored_and_a_pack_only_output(tmp_path):
    scored, packed = packing_description(32, 8, scored=True), packing_description(32, 8, scored=False)
    assert list(scored) == list(packed)  # the same keys in the same order
    assert (scored["seq_len"], scored["row_tokens"], scored["rows_per_shard"]) == (32, 33, 8)
    assert scored["rows"] == packed["rows"] and scored["first_token_logp"] != packed["first_token_logp"]
    path = _corpus(tmp_path, ["a"])
    described = input_description(open_corpus([path], tmp_path / "out", Fields(text="text"), []), Fields(text="text"))
    assert described["fields"] == {"text": "text", "id": "id", "tokens": None} and len(described["paths"]) == 1
