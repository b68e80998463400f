"""`remit-annotate pack`: the scored path's rows, without scoring; validate, train-only-with-none."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from remit.annotate.cli import main
from remit.shards import open_output, read_manifest
from remit.shards.validate import validate_output


def _corpus(path, n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "12", "7", "+", "=", "so", "the", "answer", "é", "数"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choice(words, int(rng.integers(1, 60))))
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
        f.write(json.dumps({"id": "empty", "text": ""}) + "\n")
    return path


def _pack(tok, inputs, out, *extra: str) -> int:
    args = ["pack", "--tokenizer", str(tok), "--input", *map(str, inputs), "--output", str(out)]
    return main([*args, "--seq-len", "32", "--rows-per-shard", "4", *extra])


def _rows(out) -> pa.Table:
    return pa.concat_tables(list(open_output(out).iter_tables()))


@pytest.fixture(scope="module")
def packed(tmp_path_factory, model_pair):
    root = tmp_path_factory.mktemp("pack")
    corpus = _corpus(root / "c.jsonl")
    assert _pack(model_pair[0], [corpus], root / "out") == 0
    return root


def test_pack_only_output_validates_and_says_it_is_unscored(packed):
    assert validate_output(packed / "out") == []
    m = read_manifest(packed / "out")
    assert m.scored is False and m.data["models"] == {} and m.data["input"]["skipped"] == {"empty document": 1}
    t = _rows(packed / "out")
    assert np.all(np.isnan(pc.list_flatten(t.column("logp_rl")).to_numpy()))
    assert np.all(pc.list_flatten(t.column("weight")).to_numpy() == 1.0)


def test_rows_equal_the_scored_paths_rows(packed, model_pair):
    """Same packer, same BOS/EOS policy: the hf-engine annotation of the corpus has the same token layout."""
    base, rl = model_pair
    scored = packed / "scored"
    args = ["--base", str(base), "--rl", str(rl), "--input", str(packed / "c.jsonl"), "--output", str(scored)]
    assert main([*args, "--engine", "hf", "--seq-len", "32", "--rows-per-shard", "4", "--progress-every", "1e9"]) == 0
    a, b = _rows(packed / "out"), _rows(scored)
    for col in ("sample_id", "token_ids", "segment_starts", "segment_doc_ids", "segment_doc_offsets", "source"):
        assert a.column(col).equals(b.column(col)), col
    assert read_manifest(packed / "out").tokenizer_hash == read_manifest(scored).tokenizer_hash
    assert [s["token_checksum"] for s in read_manifest(packed / "out").shards] == [
        s["token_checksum"] for s in read_manifest(scored).shards
    ]


def test_rerun_is_byte_identical_and_another_run_is_refused(packed, model_pair, tmp_path, capsys):
    assert _pack(model_pair[0], [packed / "c.jsonl"], tmp_path / "again") == 0
    for f in sorted((packed / "out").iterdir()):
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes(), f.name
    assert _pack(model_pair[0], [packed / "c.jsonl"], tmp_path / "again") == 0  # finished: left as it is
    assert _pack(model_pair[0], [packed / "c.jsonl"], tmp_path / "again", "--eos", "never") == 2
    assert "of a different run" in capsys.readouterr().err


def test_bad_flags_fail_with_one_line(model_pair, tmp_path, capsys):
    assert _pack(tmp_path / "nope", [tmp_path / "c.jsonl"], tmp_path / "o") == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert _pack(model_pair[0], [tmp_path / "missing.jsonl"], tmp_path / "o") == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_validate_catches_a_weight_in_a_pack_only_output(packed, tmp_path):
    import shutil

    from remit.shards.writer import write_table

    out = tmp_path / "out"
    shutil.copytree(packed / "out", out)
    m = read_manifest(out)
    path = out / m.shards[0]["file"]
    t = open_output(out).read(0)
    w = pc.list_flatten(t.column("weight")).to_numpy().copy()
    w[3] = 1.1
    offsets = t.column("weight").combine_chunks().offsets
    t = t.set_column(t.schema.get_field_index("weight"), "weight", pa.ListArray.from_arrays(offsets, pa.array(w)))
    write_table(t, path)
    problems = [str(p) for p in validate_output(out)]
    assert any("weight is not 1.0 in a pack-only output" in p for p in problems), problems


def test_stats_and_show_say_a_pack_only_output_has_no_weights(packed, tmp_path, capsys):
    pytest.importorskip("duckdb")
    assert main(["stats", str(packed / "out")]) == 0
    out = capsys.readouterr().out
    assert "pack-only output" in out and "no weights" in out and len(out.strip().splitlines()) == 1
    assert main(["stats", str(packed / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    m = read_manifest(packed / "out")
    assert summary["scored"] is False and summary["tokens"] == m.total_tokens and summary["rows"] == m.total_rows
    assert main(["show", str(packed / "out"), "-o", str(tmp_path / "page.html")]) == 2
    err = capsys.readouterr().err
    assert "no weights" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "page.html").exists()


def test_a_folder_with_an_annotations_unfinished_work_is_refused(packed, model_pair, tmp_path, capsys):
    from remit.annotate.workdir import WorkDir

    out = tmp_path / "out"
    WorkDir(out).run_path.parent.mkdir(parents=True)
    WorkDir(out).run_path.write_text("{}")
    assert _pack(model_pair[0], [packed / "c.jsonl"], out) == 2
    err = capsys.readouterr().err
    assert "unfinished work of an annotation run" in err and "Traceback" not in err
    assert not list(out.glob("shard-*.parquet"))


def test_a_rerun_over_an_unfinished_longer_output_removes_its_extra_shards(packed, model_pair, tmp_path):
    from remit.annotate.claim import claim_folder
    from remit.annotate.workdir import WorkDir

    # A shard in a folder remit does not own is someone else's file: refused, untouched.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "shard-00999.parquet").write_bytes(b"not remit's")
    assert _pack(model_pair[0], [packed / "c.jsonl"], foreign) == 2
    assert [p.name for p in foreign.iterdir()] == ["shard-00999.parquet"]
    # In remit's own folder (the marker of an earlier, longer unfinished run) it is removed.
    out = tmp_path / "out"
    claim_folder(WorkDir(out))
    (out / "shard-00999.parquet").write_bytes(b"left by an earlier run")
    assert _pack(model_pair[0], [packed / "c.jsonl"], out) == 0
    assert not (out / "shard-00999.parquet").exists()
    assert validate_output(out) == []


def test_the_flags_are_generated_from_the_config_and_shared_ones_match_annotate():
    from remit.annotate.cli import build_parser
    from remit.annotate.config import AnnotateConfig
    from remit.annotate.pack import PackConfig
    from remit.common.flags import flags

    parser = build_parser("pack")
    options = {o for a in parser._actions for o in a.option_strings if o != "-h" and o != "--help"}
    assert options == {f.flag for f in flags(PackConfig)}
    annotate = {f.name: f for f in flags(AnnotateConfig)}
    for f in flags(PackConfig):
        if f.name in annotate and f.name != "rows_per_shard":
            same = annotate[f.name]
            assert (f.flag, f.help, f.default, f.choices) == (same.flag, same.help, same.default, same.choices)


def test_files_of_no_input_type_are_listed_and_an_output_inside_an_input_refused(packed, model_pair, tmp_path, capsys):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(packed / "c.jsonl", folder / "c.jsonl")
    (folder / "notes.csv").write_text("a,b\n")
    assert _pack(model_pair[0], [folder], tmp_path / "out") == 0
    m = read_manifest(tmp_path / "out")
    assert m.passes == "none" and m.data["input"]["ignored_files"] == 1
    assert m.data["input"]["ignored_examples"] == [str(folder / "notes.csv")]
    assert "not an input file, not read" in capsys.readouterr().err
    assert _pack(model_pair[0], [folder], folder / "out") == 2
    assert "lies inside the input folder" in capsys.readouterr().err
