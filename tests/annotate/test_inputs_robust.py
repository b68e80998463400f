"""Damaged and unusual inputs: compressed formats, files a folder holds that are no input, malformed
records, truncated or corrupt files, and the inputs' content in the run identity; a fuzz test of the readers."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remit.annotate import hashcache
from remit.annotate.cli import main
from remit.annotate.hashcache import HashCache
from remit.annotate.inputs import Fields, Record, Skip, fingerprint, read_inputs, read_source, scan_inputs
from tests.annotate.test_inputs import DOCS, plan_tokens


def _lines(docs=DOCS) -> bytes:
    return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")


def write_compressed(path: Path, data: bytes) -> Path:
    suffix = path.suffix
    if suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif suffix == ".bz2":
        path.write_bytes(bz2.compress(data))
    elif suffix == ".xz":
        path.write_bytes(lzma.compress(data))
    elif suffix == ".zst":
        with pa.CompressedOutputStream(str(path), "zstd") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def items(path: Path, fields: Fields | None = None) -> list[Record | Skip]:
    return list(read_source(path, fields or Fields()))


CODECS = [".gz", ".bz2", ".xz", ".zst"]


@pytest.mark.parametrize("suffix", CODECS)
def test_each_compression_reads_the_records(tmp_path, suffix):
    path = write_compressed(tmp_path / f"docs.jsonl{suffix}", _lines())
    got = items(path)
    assert [r.text for r in got if isinstance(r, Record)] == [d["text"] for d in DOCS]
    assert not [s for s in got if isinstance(s, Skip)]


@pytest.fixture(scope="module")
def plain_tokens(model_pair, tmp_path_factory) -> list[list[int]]:
    """The planned rows of DOCS from one plain JSONL file."""
    d = tmp_path_factory.mktemp("plain")
    return plan_tokens(model_pair, [write_compressed(d / "docs.jsonl", _lines())], d / "out")[0]


def test_compressed_files_in_a_folder_are_read_and_other_files_listed(model_pair, plain_tokens, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    # One document per file, in name order: the planned tokens equal those of the plain JSONL file.
    for i, (doc, suffix) in enumerate(zip(DOCS, [".zst", ".bz2", ".xz"])):
        write_compressed(folder / f"{i}.jsonl{suffix}", _lines([doc]))
    (folder / "README").write_text("not a document")
    (folder / "notes.csv").write_text("a,b\n")
    (folder / "weights.bin").write_bytes(os.urandom(64))
    rows, plan = plan_tokens(model_pair, [folder], tmp_path / "out")
    assert rows == plain_tokens
    totals = plan["totals"]
    assert totals["ignored_files"] == 3
    assert sorted(Path(p).name for p in totals["ignored_examples"]) == ["README", "notes.csv", "weights.bin"]
    assert totals["documents"] == len(DOCS)


def test_a_folder_of_only_unknown_files_is_refused_naming_one(tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="data.csv"):
        scan_inputs([folder])


BAD_LINES = [
    (b'{"id": "u", "text": "bad \\ud800 surrogate"}', "unpaired surrogate"),
    (b'{"id": "v", "text": "caf\xe9"}', "not UTF-8"),
    (b'\xef\xbb\xbf{"id": "w", "text": "bom"}', "byte-order mark"),
    (b'{"id": "x", "text": 5}', "not a string"),
    (b'{"id": "y", "text": ["a"]}', "not a string"),
    (b'{"id": ["z"], "text": "ok"}', "bad id"),
    (b"[1, 2]", "not an object"),
    (b'{"id": "q", "text": "unterminated', "invalid JSON"),
]


def test_every_malformed_text_record_is_a_named_counted_skip(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(_lines() + b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    got = items(path)
    assert [r.text for r in got if isinstance(r, Record)] == [d["text"] for d in DOCS]
    skips = [s for s in got if isinstance(s, Skip)]
    assert [s.kind for s in skips] == [kind for _, kind in BAD_LINES]
    assert [s.index for s in skips] == list(range(len(DOCS), len(DOCS) + len(BAD_LINES)))
    assert all(s.source == str(path) and s.reason for s in skips)


TOKEN_CASES = [
    ([1, 2.0, 3], "not token ids"),  # a float, even a whole one
    ([1, "2", 3], "not token ids"),  # a digit string
    ([1, True, 3], "not token ids"),  # a boolean
    ("1 2 3", "not token ids"),
    ([1, -1, 3], "token id out of range"),
]


def test_token_ids_must_be_integers(tmp_path):
    path = tmp_path / "tok.jsonl"
    good = {"id": "g", "toks": [5, 6, 7]}
    path.write_text("".join(json.dumps({"id": str(i), "toks": t}) + "\n" for i, (t, _) in enumerate(TOKEN_CASES)))
    path.write_text(path.read_text() + json.dumps(good) + "\n")
    got = items(path, Fields(tokens="toks"))
    assert [s.kind for s in got if isinstance(s, Skip)] == [kind for _, kind in TOKEN_CASES]
    (record,) = [r for r in got if isinstance(r, Record)]
    assert record.tokens.tolist() == [5, 6, 7]


def test_token_ids_at_or_above_the_vocabulary_are_skipped_at_planning(model_pair, tmp_path):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(model_pair[0])))
    path = tmp_path / "tok.jsonl"
    docs = [{"id": "ok", "toks": list(range(40))}, {"id": "big", "toks": [3, vocab, 4]}]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    _, plan = plan_tokens(model_pair, [path], tmp_path / "out", "--token-field", "toks", "--bos", "never")
    assert plan["totals"]["skipped"] == {"token id out of range": 1}
    assert "big" in plan["totals"]["skip_examples"][0] and str(vocab) in plan["totals"]["skip_examples"][0]


def test_strict_names_file_and_record_for_a_surrogate(model_pair, tmp_path, capsys):
    path = tmp_path / "s.jsonl"
    path.write_bytes(_lines() + BAD_LINES[0][0] + b"\n")
    base, rl = model_pair
    argv = ["plan", "--base", str(base), "--rl", str(rl), "--input", str(path), "--output", str(tmp_path / "o")]
    assert main([*argv, "--engine", "hf", "--seq-len", "16", "--strict"]) != 0
    err = capsys.readouterr().err
    assert f"{path} record {len(DOCS)}" in err and "surrogate" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _gzip_members(docs_per_member: list[list[dict]]) -> bytes:
    return b"".join(gzip.compress(_lines(d)) for d in docs_per_member)


def test_a_truncated_gzip_keeps_the_records_before_the_cut(tmp_path):
    docs = [{"id": str(i), "text": f"document {i} " + "x" * 3000} for i in range(40)]
    data = gzip.compress(_lines(docs), compresslevel=1)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    got = items(path)
    kept = [r for r in got if isinstance(r, Record)]
    (skip,) = [s for s in got if isinstance(s, Skip)]
    assert 0 < len(kept) < len(docs)
    assert [r.doc_id for r in kept] == [str(i) for i in range(len(kept))]  # a prefix, in order
    assert skip.kind == "truncated file" and skip.index == len(kept) and f"{len(kept)} complete" in skip.reason


def test_a_corrupt_gzip_block_is_a_named_skip_of_the_whole_file(tmp_path):
    docs = [{"id": str(i), "text": f"document {i} " + "y" * 500} for i in range(20)]
    data = bytearray(gzip.compress(_lines(docs), compresslevel=1))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(data))
    got = items(path)
    assert not [r for r in got if isinstance(r, Record)]
    (skip,) = got
    assert skip.kind in ("corrupt file", "unreadable file") and skip.records >= 1 and skip.source == str(path)


def test_a_corrupt_gzip_in_a_plan_is_counted_and_the_other_files_kept(model_pair, tmp_path):
    good = tmp_path / "in" / "a.jsonl"
    good.parent.mkdir()
    good.write_bytes(_lines())
    bad = tmp_path / "in" / "b.jsonl.gz"
    data = bytearray(gzip.compress(_lines([{"id": str(i), "text": "z" * 400} for i in range(10)])))
    data[30:60] = bytes(60 - 30)
    bad.write_bytes(bytes(data))
    _, plan = plan_tokens(model_pair, [good.parent], tmp_path / "out")
    assert plan["totals"]["documents"] == len(DOCS)
    skipped = plan["totals"]["skipped"]
    assert set(skipped) & {"corrupt file", "unreadable file", "truncated file"}, skipped
    assert any(str(bad) in e for e in plan["totals"]["skip_examples"])


def test_a_damaged_parquet_row_group_is_skipped_and_the_others_kept(tmp_path):
    texts = [f"row {i} " + "w" * 200 for i in range(30)]
    path = tmp_path / "docs.parquet"
    pq.write_table(
        pa.table({"id": [str(i) for i in range(30)], "text": texts}),
        path,
        row_group_size=10,
        compression="none",
        use_dictionary=False,
        write_page_checksum=True,
    )
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(1).column(1)  # the text column of the middle row group
    data = bytearray(path.read_bytes())
    at = col.data_page_offset + col.total_compressed_size // 2
    data[at : at + 8] = bytes(b ^ 0x5A for b in data[at : at + 8])
    path.write_bytes(bytes(data))
    got = items(path)
    kept = [r.text for r in got if isinstance(r, Record)]
    skips = [s for s in got if isinstance(s, Skip)]
    assert kept[:10] == texts[:10] and kept[-10:] == texts[20:]
    assert len(skips) == 1 and skips[0].kind == "corrupt row group"
    assert len(kept) + skips[0].records == 30


def test_a_truncated_parquet_file_is_a_named_skip(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    (skip,) = items(path)
    assert isinstance(skip, Skip) and skip.kind == "unreadable file" and str(path) == skip.source


def test_an_edited_corpus_of_the_same_size_is_another_run(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "aaaa"}\n')
    before = fingerprint(scan_inputs([path]))
    st_before = path.stat()
    path.write_text('{"text": "bbbb"}\n')
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))  # even with the old modification time
    after = fingerprint(scan_inputs([path]))
    assert before[0]["bytes"] == after[0]["bytes"]
    assert before[0]["sha256"] != after[0]["sha256"]


def test_content_hashes_are_cached_by_file_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("REMIT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_lines())
    calls = []
    real = hashcache._hash_file
    monkeypatch.setattr(hashcache, "_hash_file", lambda p: calls.append(p) or real(p))
    first = fingerprint(scan_inputs([path]))
    assert fingerprint(scan_inputs([path])) == first and len(calls) == 1  # the second read came from the cache
    path.write_bytes(_lines()[::-1])
    assert HashCache().sha256(path) != first[0]["sha256"] and len(calls) == 2


# -- fuzz ------------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["id", "text", "t"]), inner),
    max_leaves=8,
)


def _check_items(got: list, path: Path) -> None:
    for item in got:
        assert isinstance(item, (Record, Skip))
        assert item.source.startswith(str(path))
        if isinstance(item, Skip):
            assert item.reason and item.kind and item.records >= 1
        elif item.text is not None:
            item.text.encode("utf-8")  # valid Unicode: no surrogate reaches the tokenizer
        else:
            assert item.tokens is not None and item.tokens.dtype.kind == "i" and (item.tokens >= 0).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    objs=st.lists(_json_values, max_size=6),
    junk=st.binary(max_size=40),
    suffix=st.sampled_from(["", ".gz", ".bz2", ".xz", ".zst"]),
    cut=st.floats(0, 1),
    tokens=st.booleans(),
)
def test_fuzz_the_jsonl_readers_never_raise(tmp_path_factory, objs, junk, suffix, cut, tokens):
    data = "".join(json.dumps(o) + "\n" for o in objs).encode() + junk
    path = write_compressed(tmp_path_factory.mktemp("fuzz") / f"f.jsonl{suffix}", data)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * cut)] if cut < 0.5 else raw)  # half the examples cut short
    fields = Fields(text="text", id="id", tokens="t" if tokens else None)
    got = list(read_inputs([path], fields))
    _check_items(got, path)
    if cut >= 0.5 and not junk:  # intact: one item per line
        assert len(got) == len(objs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 6))
def test_fuzz_a_damaged_parquet_file_never_raises(tmp_path_factory, seed, flips):
    rng = random.Random(seed)
    path = tmp_path_factory.mktemp("fuzzpq") / "d.parquet"
    pq.write_table(
        pa.table({"id": [str(i) for i in range(40)], "text": [f"t{i} " * rng.randint(1, 30) for i in range(40)]}),
        path,
        row_group_size=8,
        write_page_checksum=rng.random() < 0.5,
    )
    data = bytearray(path.read_bytes())
    for _ in range(flips):
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    if rng.random() < 0.3:
        data = data[: rng.randrange(len(data))]
    path.write_bytes(bytes(data))
    got = list(read_source(path, Fields()))
    _check_items(got, path)
