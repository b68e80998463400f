"""`remit-annotate show`: a self-contained page, escaped text, colours and row choice."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from remit.annotate.inspect import show
from tests.annotate.inspect.conftest import EVIL_DOC_ID, EVIL_SOURCE, EVIL_TEXT
from tests.annotate.inspect.pagetools import parse_page

pytest.importorskip("duckdb")
pytest.importorskip("matplotlib")

SMALL_PLOT = ("--plot-tokens", "2000")


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="remit-annotate show")
    show.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def render(tmp_path: Path, *argv) -> str:
    out = tmp_path / "page.html"
    assert show.run(parse(*argv, "-o", out, *SMALL_PLOT)) == 0
    assert not list(tmp_path.glob("*.tmp"))
    return out.read_text(encoding="utf-8")


def test_flags_are_frozen() -> None:
    p = argparse.ArgumentParser()
    show.add_arguments(p)
    flags = sorted(s for a in p._actions for s in a.option_strings if s not in ("-h", "--help"))
    assert flags == [
        "--doc",
        "--html",
        "--memory-limit",
        "--plot-tokens",
        "--random",
        "--seed",
        "--threads",
        "--tokenizer",
        "--top",
        "-o",
    ]


def test_colour_scale() -> None:
    assert show.weight_colour(1.0, 0.2) == "#ffffff"
    assert show.weight_colour(0.8, 0.2) == "#{:02x}{:02x}{:02x}".format(*show.BLUE)
    assert show.weight_colour(1.2, 0.2) == "#{:02x}{:02x}{:02x}".format(*show.RED)
    assert show.weight_colour(0.5, 0.2) == show.weight_colour(0.8, 0.2)  # beyond the clip: full colour
    # Halfway to the bound: halfway between white and the colour.
    half = show.weight_colour(1.1, 0.2)
    got = [int(half[i : i + 2], 16) for i in (1, 3, 5)]
    assert got == pytest.approx([(255 + c) / 2 for c in show.RED], abs=1)


def test_page_is_self_contained(tmp_path: Path, small_output: Path) -> None:
    page = render(tmp_path, small_output)
    parsed = parse_page(page)
    # No script at all, no stylesheet or font link, nothing fetched: images are inline data.
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.IGNORECASE)
    assert "url(" not in page and "@import" not in page
    assert len(parsed.img_src) == 3 and all(s.startswith("data:image/png;base64,") for s in parsed.img_src)
    # Three parts, in order: rows, plots, manifest.
    assert page.index('id="rows"') < page.index('id="plots"') < page.index('id="manifest"')
    manifest = json.loads((small_output / "manifest.json").read_text())
    assert manifest["run_id"] in page and "weights.eps" in page
    assert len(re.findall(r"<h3>row \d+</h3>", page)) == show.DEFAULT_ROWS


def test_markup_in_a_document_renders_as_text(tmp_path: Path, text_output: Path) -> None:
    page = render(tmp_path, text_output, "--doc", EVIL_DOC_ID)
    parsed = parse_page(page)
    # The page has no script element anywhere, although the document, its id and its source are full of them.
    assert "script" not in parsed.tags and "b" not in parsed.tags and "i" not in parsed.tags
    assert "<script" not in page.lower()
    # Read back as text, the document's tokens give exactly its text (plus EOS; newlines carry a mark).
    assert len(parsed.segment_texts) >= 1
    shown = "".join(parsed.segment_texts).replace("\u21b5\n", "\n")
    assert shown == EVIL_TEXT + "</s>"
    meta = " ".join(parsed.meta_texts)
    assert EVIL_DOC_ID in meta and EVIL_SOURCE in meta
    assert "<b>not bold</b> & co" in "".join(parsed.text)  # a manifest value
    # Each tooltip is an attribute: quotes and ampersands escaped, readable back as the token's text.
    assert any('"hi"' in s.text or '"' in s.title for s in parsed.spans)


def test_spans_carry_the_shard_values(tmp_path: Path, text_output: Path) -> None:
    page = render(tmp_path, text_output, "--doc", "plain-0")
    spans = parse_page(page).spans
    table = pq.read_table(text_output / "shard-00000.parquet").to_pylist()
    want = []
    for row in table:
        ends = [*row["segment_starts"][1:], row["n_tokens"]]
        for a, b, doc in zip(row["segment_starts"], ends, row["segment_doc_ids"]):
            if doc == "plain-0":
                want += list(zip(row["logp_base"][a:b], row["logp_rl"][a:b], row["weight"][a:b]))
    assert len(spans) == len(want)
    for span, (lb, lr, w) in zip(spans, want):
        assert f"weight {w:.4f}" in span.title
        if np.isnan(lb):
            assert "unscored" in span.classes and "no log-prob" in span.title
        else:
            assert f"logp_base {lb:.4f}" in span.title and f"logp_rl {lr:.4f}" in span.title
            assert f"background:{show.weight_colour(w, 0.2)}" in span.style


def test_top_rows_are_the_most_up_weighted(tmp_path: Path, small_output: Path) -> None:
    page = render(tmp_path, small_output, "--top", "3")
    shown = [int(x) for x in re.findall(r"<h3>row (\d+)</h3>", page)]
    rows = [
        r
        for p in sorted(small_output.glob("*.parquet"))
        for r in pq.read_table(p, columns=["sample_id", "mean_weight", "n_scored"]).to_pylist()
    ]
    floor = max(r["n_scored"] for r in rows) // 2
    best = sorted((r for r in rows if r["n_scored"] >= floor), key=lambda r: (-r["mean_weight"], r["sample_id"]))
    assert shown == [r["sample_id"] for r in best[:3]]


def test_random_rows_follow_the_seed(tmp_path: Path, small_output: Path) -> None:
    shards = json.loads((small_output / "manifest.json").read_text())["shards"]
    total = sum(s["rows"] for s in shards)
    picks = show.random_sample_ids(shards, 4, seed=1)
    assert picks == show.random_sample_ids(shards, 4, seed=1)
    assert len(set(picks)) == 4 and all(0 <= p < total for p in picks)
    assert {tuple(show.random_sample_ids(shards, 4, seed=s)) for s in range(5)} != {tuple(picks)}
    assert sorted(show.random_sample_ids(shards, total + 5, seed=0)) == list(range(total))
    page = render(tmp_path, small_output, "--random", "4", "--seed", "1")
    assert [int(x) for x in re.findall(r"<h3>row (\d+)</h3>", page)] == picks


def test_raw_ids_without_a_tokenizer(tmp_path: Path, small_output: Path) -> None:
    page = render(tmp_path, small_output, "--random", "1")
    spans = parse_page(page).spans
    assert spans and all(re.fullmatch(r"\[\d+\]", s.text) for s in spans)
    assert "not decoded" in page


def test_clear_errors(capsys, tmp_path: Path, small_output: Path) -> None:
    assert show.run(parse(small_output, "-o", tmp_path / "p.html", "--doc", "no-such-doc")) == 2
    assert "no-such-doc" in capsys.readouterr().err
    assert show.run(parse(tmp_path, "-o", tmp_path / "p.html")) == 2
    assert "manifest.json: missing" in capsys.readouterr().err
    assert not (tmp_path / "p.html").exists()
