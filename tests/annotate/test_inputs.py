"""Input formats give the same planned tokens; bad records are skipped and counted, or fail under --strict."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remit.annotate.cli import main
from remit.annotate.inputs import Fields, InputError, Record, Skip, expand_inputs, read_inputs
from remit.annotate.workdir import WorkDir

DOCS = [
    {"id": "a", "text": "So 2 + 2 = 4. Therefore the answer is 4."},
    {"id": "b", "text": 'Größe, 数学, emoji 🧮 and <script>alert(1)</script> & "quotes".'},
    {"id": "c", "text": "Adding 17 and 25 gives 42, so the total is \\boxed{42}."},
]


def plan_tokens(model_pair, inputs, out, *extra) -> tuple[list[list[int]], dict]:
    base, rl = model_pair
    args = [
        "plan",
        "--base",
        str(base),
        "--rl",
        str(rl),
        "--input",
        *map(str, inputs),
        "--output",
        str(out),
        "--engine",
        "hf",
        "--seq-len",
        "16",
        "--rows-per-shard",
        "4",
        "--progress-every",
        "1000",
        *extra,
    ]
    assert main(args) == 0
    work = WorkDir(out)
    plan = work.read_plan()
    rows = []
    for u in plan.units:
        rows += work.read_planned_unit(u).column("token_ids").to_pylist()
    return rows, plan.to_dict()


@pytest.fixture(scope="module")
def reference(model_pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    p = d / "docs.jsonl"
    p.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in DOCS), encoding="utf-8")
    return plan_tokens(model_pair, [p], d / "out")[0]


def test_jsonl_gzip(model_pair, reference, tmp_path):
    p = tmp_path / "docs.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in DOCS)
    assert plan_tokens(model_pair, [p], tmp_path / "o")[0] == reference


def test_parquet_with_other_text_field(model_pair, reference, tmp_path):
    p = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [d["id"] for d in DOCS], "body": [d["text"] for d in DOCS]}), p)
    assert plan_tokens(model_pair, [p], tmp_path / "o", "--text-field", "body")[0] == reference


def test_folder_of_text_files(model_pair, reference, tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    for d in DOCS:
        (folder / f"{d['id']}.txt").write_text(d["text"], encoding="utf-8")
    assert plan_tokens(model_pair, [folder], tmp_path / "o")[0] == reference


def test_datasets_folder(model_pair, reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(DOCS)
    ds.save_to_disk(str(tmp_path / "ds"))
    assert plan_tokens(model_pair, [tmp_path / "ds"], tmp_path / "o")[0] == reference


def test_pretokenized_parquet(model_pair, reference, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_pair[0]))
    ids = [tok(d["text"], add_special_tokens=False)["input_ids"] for d in DOCS]
    p = tmp_path / "tok.parquet"
    pq.write_table(pa.table({"id": [d["id"] for d in DOCS], "input_ids": pa.array(ids, pa.list_(pa.int32()))}), p)
    assert plan_tokens(model_pair, [p], tmp_path / "o", "--token-field", "input_ids")[0] == reference


def test_bos_policy_is_applied_and_recorded(model_pair, tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text(json.dumps(DOCS[0]) + "\n")
    rows, _ = plan_tokens(model_pair, [p], tmp_path / "o", "--bos", "always", "--eos", "never")
    flat = [t for r in rows for t in r]
    assert flat[0] == 1 and flat[-1] != 2  # BOS id 1 first, no EOS (id 2) at the end
    run = json.loads((tmp_path / "o" / "_work" / "run.json").read_text())
    assert run["tokenizer"]["add_bos"] is True and run["tokenizer"]["add_eos"] is False


BAD_LINES = [
    json.dumps({"id": "ok1", "text": "fine text"}),
    "{not json",
    json.dumps({"id": "nofield", "body": "x"}),
    json.dumps({"id": "notstr", "text": 42}),
    json.dumps({"id": "empty", "text": ""}),
    json.dumps(["a", "list"]),
    json.dumps({"id": "ok2", "text": "more fine text"}),
]


def test_bad_records_are_skipped_and_counted(model_pair, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(("\n".join(BAD_LINES) + "\n").encode() + b'{"id": "latin", "text": "caf\xe9"}\n')
    _rows, plan = plan_tokens(model_pair, [p], tmp_path / "o")
    assert plan["totals"]["documents"] == 2
    assert plan["totals"]["skipped"] == {
        "empty document": 1,
        "invalid JSON": 1,
        "missing field": 1,
        "not a string": 1,
        "not an object": 1,
        "not UTF-8": 1,
    }
    assert any("record 1" in e and "invalid JSON" in e for e in plan["totals"]["skip_examples"])


def test_strict_fails_on_first_bad_record(model_pair, tmp_path, capsys):
    base, rl = model_pair
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(BAD_LINES) + "\n")
    code = main(
        [
            "--base",
            str(base),
            "--rl",
            str(rl),
            "--input",
            str(p),
            "--output",
            str(tmp_path / "o"),
            "--engine",
            "hf",
            "--seq-len",
            "16",
            "--strict",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{p} record 1" in err and "invalid JSON" in err and "--strict" in err
    assert not list((tmp_path / "o").glob("*.parquet"))


def test_truncated_gzip_is_skipped_not_fatal(tmp_path):
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.writelines(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(200))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    items = list(read_inputs(expand_inputs([p]), Fields()))
    assert isinstance(items[0], Record) and isinstance(items[-1], Skip)
    assert items[-1].kind == "truncated file"  # the records before the cut are kept


def test_no_usable_documents_is_an_error(model_pair, tmp_path, capsys):
    base, rl = model_pair
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"text": ""}) + "\n")
    assert (
        main(
            [
                "--base",
                str(base),
                "--rl",
                str(rl),
                "--input",
                str(p),
                "--output",
                str(tmp_path / "o"),
                "--engine",
                "hf",
                "--seq-len",
                "16",
            ]
        )
        == 2
    )
    assert "no usable documents" in capsys.readouterr().err


def test_bad_paths(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "nope.jsonl"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(InputError, match="unknown file type"):
        expand_inputs([tmp_path / "x.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        expand_inputs([tmp_path / "empty"])


def test_missing_column_names_the_flag(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    with pytest.raises(InputError, match="--text-field"):
        list(read_inputs([p], Fields()))


def test_doc_ids_default_to_file_and_record(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "x"}) + "\n" + json.dumps({"text": "y", "id": 7}) + "\n")
    ids = [r.doc_id for r in read_inputs([p], Fields())]
    assert ids == [f"{p}:0", "7"]


def test_missing_column_fails_before_any_work(model_pair, tmp_path, capsys):
    base, rl = model_pair
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps({"text": "fine"}) + "\n")
    bad = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad)
    code = main(
        [
            "plan",
            "--base",
            str(base),
            "--rl",
            str(rl),
            "--input",
            str(good),
            str(bad),
            "--output",
            str(tmp_path / "o"),
            "--engine",
            "hf",
            "--seq-len",
            "16",
        ]
    )
    assert code == 2
    assert "no column 'text'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
