"""End to end: corpus -> shards with the hf engine (and once with vLLM), checked against independent
references: the tokenizer for packing, a plain transformers forward for log-probs, the weight rule."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from remit.annotate.cli import main
from remit.annotate.demo import sample_corpus_path
from remit.shards import open_output, remit_weights
from remit.shards.validate import validate_output

SEQ_LEN = 64


def annotate(base, rl, inputs, output, *extra: str) -> int:
    args = [
        "--base",
        str(base),
        "--rl",
        str(rl),
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        "--engine",
        "hf",
        "--seq-len",
        str(SEQ_LEN),
        "--rows-per-shard",
        "8",
        "--progress-every",
        "1000",
        *extra,
    ]
    return main(args)


def all_rows(output: Path) -> pa.Table:
    return pa.concat_tables(list(open_output(output).iter_tables()))


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_pair):
    base, rl = model_pair
    out = tmp_path_factory.mktemp("ann") / "out"
    assert annotate(base, rl, [sample_corpus_path()], out) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer(model_pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_pair[0]))


def documents():
    with open(sample_corpus_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_output_validates(run):
    assert validate_output(run) == []


def test_nothing_lost_or_duplicated(run, tokenizer):
    pieces: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for row in all_rows(run).to_pylist():
        bounds = [*row["segment_starts"], row["n_tokens"]]
        for doc, off, a, b in zip(row["segment_doc_ids"], row["segment_doc_offsets"], bounds[:-1], bounds[1:]):
            pieces[doc].append((off, row["token_ids"][a:b]))
    docs = {d["id"]: d["text"] for d in documents()}
    expected_ids = [k for k, t in docs.items() if t]  # the empty document is skipped
    assert sorted(pieces) == sorted(expected_ids)
    for doc_id, segs in pieces.items():
        segs.sort()
        rebuilt, pos = [], 0
        for off, toks in segs:
            assert off == pos, f"{doc_id}: gap or overlap at offset {off}"
            rebuilt += toks
            pos += len(toks)
        want = tokenizer(docs[doc_id], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert rebuilt == want, doc_id


def test_long_and_unicode_documents_span_rows(run):
    rows = all_rows(run).to_pylist()
    long_rows = [r for r in rows if "long-0" in r["segment_doc_ids"]]
    assert len(long_rows) > 5  # a document many times seq_len
    assert any("unicode-0" in r["segment_doc_ids"] for r in rows)


def test_rows_are_training_windows(run):
    m = open_output(run).manifest
    lengths = all_rows(run).column("n_tokens").to_pylist()
    assert all(n == SEQ_LEN + 1 for n in lengths[:-1])
    assert 1 <= lengths[-1] <= SEQ_LEN + 1
    assert m.data["input"]["last_row_tokens"] == lengths[-1]
    assert sum(lengths) == m.total_tokens


def test_nan_exactly_at_segment_starts_and_weight_one_there(run):
    for row in all_rows(run).to_pylist():
        starts = set(row["segment_starts"])
        for c in ("logp_base", "logp_rl"):
            nan = {i for i, v in enumerate(row[c]) if v != v}
            assert nan == starts
        assert all(row["weight"][i] == 1.0 for i in starts)


def test_weights_follow_the_rule(run):
    t = all_rows(run)
    lengths = np.array(t.column("n_tokens").to_pylist())
    flat = {
        c: np.concatenate([np.array(x, np.float32) for x in t.column(c).to_pylist()])
        for c in ("logp_base", "logp_rl", "weight")
    }
    want = remit_weights(flat["logp_rl"], flat["logp_base"], lengths, eps=0.2, center="row")
    np.testing.assert_array_equal(flat["weight"], want)
    assert flat["weight"].min() >= np.float32(0.8) and flat["weight"].max() <= np.float32(1.2)


def test_log_probs_match_a_plain_forward(run, model_pair):
    """Slow reference: full-vocabulary log_softmax of one unbatched forward per segment."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = all_rows(run).to_pylist()[:6]
    for name, model_dir in zip(("logp_base", "logp_rl"), model_pair):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        for row in rows:
            bounds = [*row["segment_starts"], row["n_tokens"]]
            for a, b in zip(bounds[:-1], bounds[1:]):
                ids = torch.tensor([row["token_ids"][a:b]])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
                got = np.array(row[name][a + 1 : b], np.float32)
                np.testing.assert_allclose(got, logp.numpy(), atol=1e-4, rtol=0)


def test_manifest_contents(run, model_pair):
    m = open_output(run).manifest.data
    base, rl = model_pair
    for key, folder in (("base", base), ("rl", rl)):
        # One line per file (config.json, then the weight files): its name and its own sha256.
        lines = "".join(
            f"{f.name}\0sha256:{hashlib.sha256(f.read_bytes()).hexdigest()}\n"
            for f in [folder / "config.json", folder / "model.safetensors"]
        )
        assert m["models"][key]["weights_sha256"] == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
        assert m["models"][key]["architecture"] == "LlamaForCausalLM"
        assert m["models"][key]["path"] == str(folder.resolve())
    assert m["models"]["base"]["weights_sha256"] != m["models"]["rl"]["weights_sha256"]
    assert m["tokenizer"]["sha256"].startswith("sha256:") and m["tokenizer"]["add_eos"] is True
    assert m["tokenizer"]["add_bos"] is False and m["tokenizer"]["eos_id"] == 2
    assert m["engine"]["name"] == "hf" and m["engine"]["dtype"] == "float32" and m["engine"]["version"]
    assert m["packing"]["seq_len"] == SEQ_LEN and m["packing"]["row_tokens"] == SEQ_LEN + 1
    from remit.shards.weights import RULE

    assert m["weights"] == {"eps": 0.2, "center": "row", "rule": RULE}
    assert m["input"]["skipped"] == {"empty document": 1}
    assert m["input"]["documents"] == len(documents()) - 1
    from remit import __version__

    assert m["remit_version"] == __version__
    out = open_output(run)
    for i, s in enumerate(m["shards"]):
        t = out.read(i)  # checks the token checksum
        assert s["rows"] == t.num_rows and s["tokens"] == sum(t.column("n_tokens").to_pylist())
    assert sum(s["tokens"] for s in m["shards"]) == m["totals"]["tokens"]
    assert not (run / "_work").exists()


def test_rerun_is_a_no_op_and_a_different_run_is_refused(run, model_pair, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    base, rl = model_pair
    assert annotate(base, rl, [sample_corpus_path()], run) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert annotate(base, rl, [sample_corpus_path()], run, "--eps", "0.1") == 2
    assert "different run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_same_inputs_give_byte_identical_output(run, model_pair, tmp_path):
    base, rl = model_pair
    assert annotate(base, rl, [sample_corpus_path()], tmp_path / "again") == 0
    for p in run.iterdir():
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name


def test_equal_models_give_all_weights_one(model_pair, tmp_path):
    base, _ = model_pair
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in documents()[:20]))
    assert annotate(base, base, [docs], tmp_path / "o", "--center", "segment") == 0
    w = pa.concat_tables(list(open_output(tmp_path / "o").iter_tables())).column("weight").to_pylist()
    assert all(x == 1.0 for row in w for x in row)


def test_segment_centering_validates(model_pair, tmp_path):
    base, rl = model_pair
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in documents()[:30]))
    assert annotate(base, rl, [docs], tmp_path / "o", "--center", "segment") == 0
    assert open_output(tmp_path / "o").manifest.center == "segment"
    assert validate_output(tmp_path / "o") == []


def test_tokenizer_mismatch_is_refused(model_pair, other_tokenizer_model, tmp_path, capsys):
    base, _ = model_pair
    assert annotate(base, other_tokenizer_model, [sample_corpus_path()], tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "tokenizers" in err and "vocabulary sizes differ" in err and "added tokens differ" in err
    assert not (tmp_path / "o").exists()


def test_tokenizer_differences_are_named():
    from remit.annotate.demo import corpus_texts, train_tokenizer
    from remit.annotate.tokenize import TokenizerMismatch, check_same_tokenizer, explain_mismatch, tokenizer_hash

    texts = corpus_texts()
    a, same = train_tokenizer(texts, 600), train_tokenizer(texts, 600)
    assert tokenizer_hash(a) == tokenizer_hash(same)
    assert "BPE merges differ" in explain_mismatch(a, train_tokenizer(texts, 500))
    other_eos = train_tokenizer(texts, 600)
    other_eos.eos_token = "<unk>"
    assert "special tokens differ" in explain_mismatch(a, other_eos)
    with pytest.raises(TokenizerMismatch):
        check_same_tokenizer(a, other_eos, Path("a"), Path("b"))


def test_missing_model_and_bad_input_fail_before_any_work(model_pair, tmp_path, capsys):
    base, rl = model_pair
    assert annotate(tmp_path / "nope", rl, [sample_corpus_path()], tmp_path / "o") == 2
    assert "--base" in capsys.readouterr().err
    assert annotate(base, rl, [tmp_path / "missing.jsonl"], tmp_path / "o") == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_help_loads_no_engine():
    code = (
        "import sys\nfrom remit.annotate.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('vllm', 'torch', 'transformers', 'duckdb') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "--base" in out and "--center" in out


@pytest.mark.vllm
def test_vllm_engine_end_to_end_matches_hf(run, model_pair, tmp_path):
    base, rl = model_pair
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in documents()[:40]))
    hf_out, vl_out = tmp_path / "hf", tmp_path / "vllm"
    assert annotate(base, rl, [docs], hf_out) == 0
    assert (
        main(
            [
                "--base",
                str(base),
                "--rl",
                str(rl),
                "--input",
                str(docs),
                "--output",
                str(vl_out),
                "--seq-len",
                str(SEQ_LEN),
                "--rows-per-shard",
                "8",
                "--progress-every",
                "1000",
            ]
        )
        == 0
    )
    assert open_output(vl_out).manifest.data["engine"]["name"] == "vllm"
    a, b = all_rows(hf_out), all_rows(vl_out)
    assert a.column("token_ids").to_pylist() == b.column("token_ids").to_pylist()
    for c in ("logp_base", "logp_rl"):
        x = np.concatenate([np.array(r, np.float64) for r in a.column(c).to_pylist()])
        y = np.concatenate([np.array(r, np.float64) for r in b.column(c).to_pylist()])
        assert np.array_equal(np.isnan(x), np.isnan(y))
        assert np.nanmax(np.abs(x - y)) <= 1e-3
    assert validate_output(vl_out) == []
