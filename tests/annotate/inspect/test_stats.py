"""`remit-annotate stats` on tiny runs, checked against numpy; flags; errors; light imports."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from remit.annotate.inspect import stats
from tests.shards import views_reference as ref

pytest.importorskip("duckdb")


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="remit-annotate stats")
    stats.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def run_json(capsys, *argv: str) -> dict:
    assert stats.run(parse(*argv, "--json")) == 0
    return json.loads(capsys.readouterr().out)


def test_flags_are_frozen() -> None:
    p = argparse.ArgumentParser()
    stats.add_arguments(p)
    flags = sorted(s for a in p._actions for s in a.option_strings if s not in ("-h", "--help"))
    assert flags == ["--bins", "--json", "--memory-limit", "--min-count", "--threads", "--tokenizer", "--top-k"]


def test_json_matches_numpy(capsys, small_output: Path) -> None:
    out = run_json(capsys, small_output, "--bins", "12", "--top-k", "4", "--min-count", "30")
    f = ref.load(small_output, 0.2)
    s = f.scored
    w, d = f.weight[s].astype(np.float64), f.discrepancy[s]
    low, high = ref.at_bounds(f)
    summ = out["summary"]
    assert (summ["rows"], summ["tokens"], summ["scored_tokens"]) == (len(f.row_lengths), f.row_lengths.sum(), s.sum())
    assert summ["mean_weight"] == pytest.approx(w.mean(), rel=1e-12)
    assert summ["mean_discrepancy"] == pytest.approx(d.mean(), rel=1e-9)
    assert summ["tokens_at_low"] == int((low & s).sum()) and summ["tokens_at_high"] == int((high & s).sum())
    assert summ["weight_quantiles"]["p50"] == pytest.approx(ref.grid_quantile(w, 1e-4, 0.5), abs=1.01e-4)
    assert summ["discrepancy_quantiles"]["p99"] == pytest.approx(ref.grid_quantile(d, 1e-3, 0.99), abs=1.01e-3)
    assert summ["weight_quantiles"]["min"] == pytest.approx(w.min(), abs=5.1e-5)
    assert [b["tokens"] for b in out["weight_histogram"]] == ref.histogram(f, 12).tolist()
    assert sum(r["tokens"] for r in out["by_position"]) == int(s.sum())
    assert sum(r["rows"] for r in out["by_source"]) == len(f.row_lengths)
    want = ref.per_token(f)
    best = max((v[1], tid) for tid, v in want.items() if v[0] >= 30)
    assert out["top_up_tokens"][0]["token_id"] == best[1]
    assert out["top_up_tokens"][0]["count"] == want[best[1]][0]
    assert len(out["top_down_tokens"]) == 4
    assert all(r["text"] is None for r in out["top_up_tokens"])  # synthetic output: no tokenizer
    docs = ref.per_document(f)
    top_doc = max((e["mean_weight"], k) for k, e in docs.items() if e["scored"] >= 30)
    assert out["top_up_documents"][0]["doc_id"] == top_doc[1]
    assert "not decoded" in out["tokens_note"]


def test_text_tables_match_numpy_and_align(capsys, small_output: Path) -> None:
    assert stats.run(parse(small_output, "--bins", "10")) == 0
    text = capsys.readouterr().out
    f = ref.load(small_output, 0.2)
    s = f.scored
    lines = text.splitlines()
    summary_at = lines.index("## Summary")
    table = lines[summary_at + 1 : lines.index("", summary_at)]
    # Right-aligned numbers: every line of the summary table ends in the same column.
    assert len({len(line) for line in table}) == 1
    values = {line[: len(table[1].split("  ")[0])].strip(): line.split()[-1] for line in table[2:]}
    assert values["scored tokens"] == f"{int(s.sum()):,}"
    assert values["mean weight"] == f"{f.weight[s].astype(np.float64).mean():.4f}"
    hist_at = lines.index("## Weight histogram")
    counts = [int(line.split()[2].replace(",", "")) for line in lines[hist_at + 3 : hist_at + 13]]
    assert counts == ref.histogram(f, 10).tolist()
    assert "Top 20 up-weighted token ids" in text and "<id " in text


def test_tokens_are_decoded_with_the_manifest_tokenizer(capsys, text_output: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    out = run_json(capsys, text_output, "--min-count", "2", "--top-k", "5")
    assert out["top_up_tokens"], "the fixture must have repeated tokens"
    for r in out["top_up_tokens"] + out["top_down_tokens"]:
        assert r["text"] == tok.decode([r["token_id"]])
    assert str(tokenizer_dir) in out["tokens_note"]
    assert stats.run(parse(text_output, "--min-count", "2", "--top-k", "5")) == 0
    text = capsys.readouterr().out
    first = out["top_up_tokens"][0]
    assert repr(first["text"]) in text


def test_missing_manifest_is_a_clear_error(capsys, tmp_path: Path) -> None:
    assert stats.run(parse(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "manifest.json: missing" in err and "no output of remit-annotate" in err
    (tmp_path / "_work").mkdir()  # an unfinished output: the command that finishes it
    assert stats.run(parse(tmp_path)) == 2
    assert f"remit-annotate repair {tmp_path}" in capsys.readouterr().err
    assert stats.run(parse(tmp_path / "nope")) == 2
    assert "no such output folder" in capsys.readouterr().err


def test_bad_settings_are_refused(capsys, small_output: Path) -> None:
    assert stats.run(parse(small_output, "--top-k", "0")) == 2
    assert "top_k must be at least 1" in capsys.readouterr().err


def test_help_and_import_load_no_engine() -> None:
    code = (
        "import argparse, sys\n"
        "import remit.shards, remit.shards.views\n"
        "from remit.annotate.inspect import show, stats\n"
        "for m in (stats, show):\n"
        "    p = argparse.ArgumentParser(); m.add_arguments(p); p.format_help()\n"
        "heavy = {'duckdb', 'matplotlib', 'transformers', 'torch', 'vllm'}\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_tokenizer_other_than_the_scoring_one_is_not_used(capsys, text_output: Path, tmp_path: Path) -> None:
    from remit.annotate.demo import corpus_texts, train_tokenizer

    other = tmp_path / "other-tokenizer"
    train_tokenizer(corpus_texts(), vocab_size=500).save_pretrained(other)
    out = run_json(capsys, text_output, "--tokenizer", str(other), "--min-count", "2", "--top-k", "5")
    assert "not the one the output was scored with" in out["tokens_note"]
    assert all(r["text"] is None for r in out["top_up_tokens"])
