"""`show` with hostile data and a hostile `-o`.

- Text from the data (ids, sources, token texts, manifest values, the folder's path) holding markup,
  ``</script>``, ``<!--``, quotes, newlines and control characters reads back as the same text from
  the page, and adds no element (no script) to it.
- `-o` never overwrites a file remit did not make, nor writes inside an annotation output folder.
- `--doc ID` shows every document that carries ID, each on its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("duckdb")

from remit.annotate.inspect import show
from remit.annotate.packing import Document
from remit.shards.synthetic import random_logprobs, write_output
from remit.shards.views import connect
from tests.annotate.inspect.pagetools import Page

HOSTILE = st.lists(
    st.sampled_from(
        ["</script>", "<!--", "-->", "<script>", "<b>", "&amp;", "'", '"', "\n", "\r", "\t", "\x00", "\x0c", "\x1b"]
        + ["\x7f", "\x85", "\u2028", "]]>", "a", "é", " "]
    ),
    max_size=12,
).map("".join)


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="remit-annotate show")
    show.add_arguments(p)
    return p.parse_args([str(a) for a in argv])


def read_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def page_for(text: str) -> str:
    seg = show.Segment(1, text, 0, text, [5, 6], [float("nan"), -1.0], [float("nan"), -0.5], [1.0, 1.1])
    manifest = {"run_id": text, "weights": {"eps": 0.2, "center": text}, "config": {"note": text}, "shards": []}
    return show.build_page(
        root=Path("/out") / text,
        manifest=manifest,
        items=[show.Item(text, [seg])],
        texts={id(seg): [text, text]},
        how=text,
        note=text,
        plots=[],
    )


def expected(text: str) -> str:
    """What the page shows for `text`: the text itself, control characters as visible marks. An HTML parser
    turns a carriage-return line end into a newline; `visible` shows a lone one as a mark instead."""
    return show.visible(text)


BASELINE = Counter(read_page(page_for("plain")).tags)


@settings(max_examples=150, deadline=None)
@given(text=HOSTILE)
@example(text="</script><script>alert(1)</script>")
@example(text="<!--<script>")
@example(text="\r\n\x00")
def test_hostile_text_round_trips_and_adds_no_element(text):
    page = read_page(page_for(text))
    assert Counter(page.tags) == BASELINE
    assert "script" not in page.tags
    shown = expected(text)
    meta = page.meta_texts[0]
    assert f"document {shown} from token 0" in meta and f"· {shown} ·" in meta
    assert [s.text for s in page.spans] == [show.visible(show._shown(text))] * 2
    assert all(repr(text)[1:-1] in s.title or show.visible(repr(text)) in s.title for s in page.spans)
    whole = "".join(page.text)
    assert f"showing {shown}" in whole and f"run {shown}" in whole


# ----------------------------------------------------------------------------------------------------
# -o


@pytest.fixture(scope="module")
def dup_output(tmp_path_factory) -> Path:
    """An output where two documents share the id "twin" (one in a.jsonl, one later in b.jsonl)."""
    rng = np.random.default_rng(0)

    def doc(doc_id: str, source: str, n: int) -> Document:
        return Document(doc_id, source, np.append(rng.integers(3, 300, n - 1), 2).astype(np.int32))

    docs = [doc("twin", "a.jsonl", 50), doc("other", "a.jsonl", 30), doc("solo", "a.jsonl", 20)]
    docs += [doc("twin", "b.jsonl", 70), doc("last", "b.jsonl", 10)]
    return write_output(
        tmp_path_factory.mktemp("dup") / "out", docs, random_logprobs(np.random.default_rng(1)), seq_len=32
    )


def test_o_refuses_a_file_remit_did_not_make(tmp_path, dup_output, capsys):
    target = tmp_path / "notes.html"
    target.write_text("<html>my notes</html>")
    assert show.run(parse(dup_output, "-o", target, "--doc", "solo")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a page remit-annotate show wrote" in err
    assert target.read_text() == "<html>my notes</html>"


def test_o_overwrites_its_own_page(tmp_path, dup_output):
    target = tmp_path / "page.html"
    assert show.run(parse(dup_output, "-o", target, "--doc", "solo", "--plot-tokens", "100")) == 0
    assert show.PAGE_MARKER in target.read_text()
    assert show.run(parse(dup_output, "-o", target, "--doc", "other", "--plot-tokens", "100")) == 0
    assert "document other" in target.read_text()


@pytest.mark.parametrize("name", ["manifest.json", "shard-00000.parquet", "new.html", "sub/page.html"])
def test_o_refuses_a_target_inside_an_output_folder(tmp_path, dup_output, capsys, name):
    out = Path(shutil.copytree(dup_output, tmp_path / "out"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert show.run(parse(out, "-o", out / name, "--doc", "solo")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "inside the annotation output folder" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_o_refuses_a_symlink_to_a_foreign_file(tmp_path, dup_output):
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("keep me")
    (tmp_path / "page.html").symlink_to(foreign)
    assert show.run(parse(dup_output, "-o", tmp_path / "page.html", "--doc", "solo")) == 2
    assert foreign.read_text() == "keep me"


# ----------------------------------------------------------------------------------------------------
# duplicate document ids


def test_doc_shows_each_document_of_a_shared_id_apart(tmp_path, dup_output):
    con = connect(dup_output)
    documents = show.documents_with_id(con, "twin")
    assert [sum(len(s.token_ids) for s in d) for d in documents] == [50, 70]
    assert [d[0].doc_offset for d in documents] == [0, 0]
    target = tmp_path / "page.html"
    assert show.run(parse(dup_output, "-o", target, "--doc", "twin", "--plot-tokens", "100")) == 0
    page = read_page(target.read_text())
    whole = "".join(page.text)
    assert "2 documents have id 'twin'" in whole
    assert "#1 of 2 with this id, at row 0 token 0, from a.jsonl" in whole
    assert "#2 of 2 with this id, at row 3 token 1)" in whole  # 100 tokens before it, rows of 33


def test_views_count_documents_not_ids(dup_output):
    con = connect(dup_output)
    rows = con.execute("SELECT doc_id, tokens FROM remit_by_document ORDER BY start_token").fetchall()
    assert rows == [("twin", 50), ("other", 30), ("solo", 20), ("twin", 70), ("last", 10)]
    assert con.execute("FROM remit_duplicate_doc_ids").fetchall() == [("twin", 2)]
    assert con.execute("SELECT documents, duplicate_doc_ids FROM remit_summary").fetchone() == (5, 1)
    from remit.annotate.inspect.stats import collect

    result = collect(dup_output)
    assert (result["summary"]["documents"], result["summary"]["duplicate_doc_ids"]) == (5, 1)
    twins = [d for d in result["top_up_documents"] if d["doc_id"] == "twin"]
    assert sorted(d["tokens"] for d in twins) == [50, 70]
    manifest = json.loads((dup_output / "manifest.json").read_text())
    assert manifest["totals"]["tokens"] == 180
