"""The confirmatory study's pieces against slow references: the added splits (heldout_confirm, the clean
annealing split, the noise labels), the oracle's weights, the SFT reference and the collection of results."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.flywheel.data import (
    ANNEAL_LABELS,
    CLEAN_ANNEAL,
    CONFIRM,
    SPLITS,
    DataConfig,
    extra_splits,
    generate,
    read_jsonl,
    vocabulary_texts,
    wrong_from,
)

REPO = Path(__file__).resolve().parents[2]
EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")
CFG = DataConfig(pretrain=800, anneal=300, rl=60, dev=40, heldout=60, heldout_templates=60, heldout_confirm=200, seed=5)


def _equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in EQ.findall(text.split("Answer:")[-1])]


def _chain(text: str) -> str:
    """A problem's number chain (start, operations), recomputed from its worked solution's text: the
    operations of a wrong solution are the true ones, only results are wrong."""
    eqs = _equations(text)
    return f"{eqs[0][0]}|" + "|".join(f"{op}{b}" for _, op, b, _ in eqs)


def _texts(folder: Path, split: str) -> list[str]:
    rows = read_jsonl(folder / f"{split}.jsonl")
    return [
        r["text"] if "text" in r else r["prompt"] + " " + r["solution"]
        for r in rows
        if r.get("kind", "problem") == "problem"
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(CFG, out)
    before = {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS}
    extra_splits(CFG, out)
    assert {s: (out / f"{s}.jsonl").read_bytes() for s in SPLITS} == before, "an existing split changed"
    return out


def test_the_confirmatory_split_holds_new_chains_only_in_the_usual_mix(folder):
    rows = read_jsonl(folder / f"{CONFIRM}.jsonl")
    assert len(rows) == CFG.heldout_confirm
    chains = [_chain(t) for t in _texts(folder, CONFIRM)]
    assert len(set(chains)) == len(chains)
    taken = {c for s in SPLITS for c in map(_chain, _texts(folder, s))}
    assert not set(chains) & taken
    steps = [r["steps"] for r in rows]
    assert abs(steps.count(3) - steps.count(4)) < 0.2 * len(rows)
    assert {r["template"] for r in rows} <= {"t0", "t1", "t2"}
    for r in rows:
        eqs = _equations(r["solution"])
        assert all((a + b if op == "+" else a - b) == c for a, op, b, c in eqs)
        assert eqs[-1][3] == r["answer"] and f"The answer is {r['answer']}." in r["solution"]


def test_the_clean_split_is_the_annealing_split_with_every_solution_corrected(folder):
    noisy, clean = read_jsonl(folder / "anneal.jsonl"), read_jsonl(folder / f"{CLEAN_ANNEAL}.jsonl")
    assert [d["id"] for d in noisy] == [d["id"] for d in clean]
    corrected = 0
    for a, b in zip(noisy, clean):
        assert b["was_noise"] == a["noise"] and b["noise"] == ""
        if a["kind"] == "text" or not a["noise"]:
            assert b["text"] == a["text"]
            continue
        corrected += 1
        assert b["text"].split("\nAnswer:")[0] == a["text"].split("\nAnswer:")[0]
        assert _chain(b["text"]) == _chain(a["text"])
        eqs = _equations(b["text"])
        assert all((x + y if op == "+" else x - y) == z for x, op, y, z in eqs)
        assert all(eqs[i][0] == eqs[i - 1][3] for i in range(1, len(eqs)))
        assert b["text"].endswith(f"The answer is {eqs[-1][3]}.")
    assert corrected == sum(1 for d in noisy if d["noise"]) > 0.2 * CFG.anneal


def test_labels_point_at_the_first_wrong_number(folder):
    docs = {d["id"]: d for d in read_jsonl(folder / "anneal.jsonl")}
    labels = read_jsonl(folder / f"{ANNEAL_LABELS}.jsonl")
    assert [x["id"] for x in labels] == list(docs)
    seen = {"step": 0, "answer": 0}
    for x in labels:
        text = docs[x["id"]]["text"]
        if not x["noise"]:
            assert x["wrong_from"] is None
            continue
        seen[x["noise"]] += 1
        at = x["wrong_from"]
        number = re.match(r"\d+", text[at:]).group()
        head = text[:at]
        if x["noise"] == "step":  # the result of an equation whose arithmetic is wrong, every earlier one right
            m = re.search(r"(\d+) ([+-]) (\d+) = $", head)
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert (a + b if op == "+" else a - b) != int(number)
            assert all((p + q if o == "+" else p - q) == r for p, o, q, r in _equations(head))
        else:  # the final number, after a chain of right equations
            assert head.endswith("The answer is ") and int(number) != _equations(text)[-1][3]
    assert seen["step"] > 0 and seen["answer"] > 0


def test_wrong_from_refuses_a_label_the_text_does_not_carry():
    text = "Question: A box holds 3 pens.\nAnswer: 3 + 1 = 4. The answer is 4."
    assert wrong_from(text, "") is None
    for label in ("step", "answer"):
        with pytest.raises(ValueError, match=f"label '{label}'"):
            wrong_from(text, label)
    with pytest.raises(ValueError, match="label ''"):
        wrong_from(text.replace("= 4.", "= 5."), "")


def test_a_changed_split_file_is_refused(tmp_path):
    generate(CFG, tmp_path)
    (tmp_path / "dev.jsonl").write_text((tmp_path / "dev.jsonl").read_text().replace("apples", "pears", 1))
    with pytest.raises(ValueError, match=r"dev\.jsonl: differs from what the generator draws"):
        extra_splits(CFG, tmp_path)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, folder) -> Path:
    """An experiment folder with data/, tokenizer/ and the annealing split packed by remit-annotate pack."""
    from experiments.flywheel.models import build_tokenizer

    out = tmp_path_factory.mktemp("exp")
    (out / "data").symlink_to(folder)
    build_tokenizer(vocabulary_texts(), out / "tokenizer")
    proc = subprocess.run(
        [sys.executable, "-m", "remit.annotate.cli", "pack", "--tokenizer", str(out / "tokenizer"),
         "--input", str(folder / "anneal.jsonl"), "--output", str(out / "annotated"), "--seq-len", "64",
         "--rows-per-shard", "16"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_oracle_weights_match_a_per_document_reference(experiment):
    """Gathered per document across rows, the weights are 1.0 up to the first wrong number and 1 - eps from
    it to the end (EOS included), where the end's token count is that of the text after `wrong_from`."""
    from transformers import AutoTokenizer

    from experiments.flywheel.oracle import write_oracle_weights
    from remit.shards import open_output
    from remit.shards.external import external_file, read_external

    counts = write_oracle_weights(experiment, experiment / "annotated", experiment / "oracle", eps=0.25)
    tok = AutoTokenizer.from_pretrained(str(experiment / "tokenizer"))
    output = open_output(experiment / "annotated")
    per_doc: dict[str, list[tuple[int, np.ndarray]]] = {}
    for i in range(len(output.manifest.shards)):
        table = output.read(i)
        lengths = np.asarray(table.column("n_tokens").to_pylist())
        flat = read_external(
            external_file(experiment / "oracle", output.path(i)),
            np.asarray(table.column("sample_id").to_pylist()),
            lengths,
        )
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for r, row in enumerate(table.to_pylist()):
            w = flat[offsets[r] : offsets[r + 1]]
            bounds = [*row["segment_starts"], row["n_tokens"]]
            for k, (doc, off) in enumerate(zip(row["segment_doc_ids"], row["segment_doc_offsets"])):
                per_doc.setdefault(doc, []).append((off, w[bounds[k] : bounds[k + 1]]))
    labels = {x["id"]: x for x in read_jsonl(experiment / "data" / f"{ANNEAL_LABELS}.jsonl")}
    texts = {d["id"]: d["text"] for d in read_jsonl(experiment / "data" / "anneal.jsonl")}
    down_total = 0
    for doc, parts in per_doc.items():
        w = np.concatenate([p for _, p in sorted(parts, key=lambda x: x[0])])
        at = labels[doc]["wrong_from"]
        n_down = 0 if at is None else len(tok(texts[doc][at:], add_special_tokens=False)["input_ids"]) + 1
        expected = np.r_[np.ones(len(w) - n_down), np.full(n_down, 0.75)].astype(np.float32)
        np.testing.assert_array_equal(w, expected, err_msg=doc)
        down_total += n_down
    assert len(per_doc) == len(texts)
    assert counts["tokens_down"] == down_total > 0
    assert counts["documents_down"] == sum(1 for x in labels.values() if x["wrong_from"] is not None)


def test_oracle_refuses_tokens_that_do_not_match_the_documents(experiment, tmp_path):
    from experiments.flywheel.oracle import OracleError, write_oracle_weights

    other = tmp_path / "exp"
    other.mkdir()
    (other / "tokenizer").symlink_to(experiment / "tokenizer")
    (other / "data").mkdir()
    for name in ("anneal.jsonl", f"{ANNEAL_LABELS}.jsonl"):
        rows = read_jsonl(experiment / "data" / name)
        if name == "anneal.jsonl":
            rows = [{**r, "text": r["text"].replace(" the ", " a ")} for r in rows]
        (other / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(OracleError, match="differ from the document's own tokenisation"):
        write_oracle_weights(other, experiment / "annotated", tmp_path / "w", eps=0.2)


def test_sft_trains_on_exactly_the_solution_tokens_and_lowers_their_loss(experiment, tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from experiments.flywheel.grpo import GRPOConfig
    from experiments.flywheel.sft import solution_batch, train_sft

    tok = AutoTokenizer.from_pretrained(str(experiment / "tokenizer"))
    rows = read_jsonl(experiment / "data" / "rl.jsonl")[:5]
    ids, att, mask = solution_batch(tok, rows)
    for i, r in enumerate(rows):
        targets = ids[i, 1:][mask[i] > 0].tolist()
        assert targets == tok(" " + r["solution"])["input_ids"] + [tok.eos_token_id]
        assert int(att[i].sum()) == len(tok(r["prompt"])["input_ids"]) + len(targets)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    summary = train_sft(
        tmp_path / "base", experiment / "data", tmp_path / "sft", GRPOConfig(steps=12, prompts_per_step=8, lr=3e-3)
    )
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    assert (tmp_path / "sft" / "sft.json").exists()
    for f in (tmp_path / "base").glob("tokenizer*"):
        assert (tmp_path / "sft" / f.name).read_bytes() == f.read_bytes()


def test_collect_writes_the_layout_with_relative_paths(tmp_path):
    from experiments.flywheel.collect import collect
    from experiments.flywheel.config import FULL, record, set_field

    out = tmp_path / "exp"
    for sub in ("data", "stages", "eval/refs", "eval/mid", "models/rl"):
        (out / sub).mkdir(parents=True)
    record(out, set_field(FULL, "base_seed=2"), quick=False)
    (out / "data" / "stats.json").write_text(json.dumps({"splits": {"dev": {"problems": 3}}}))
    (out / "data" / "stats_extra.json").write_text(json.dumps({CONFIRM: {"problems": 7}}))
    (out / "stages" / "rl.json").write_text(json.dumps({"stage": "rl", "seconds": 1.5}))
    ev = {"models": [{"model": str(out.resolve() / "models" / "rl"), "iteration": None}]}
    (out / "eval" / "refs" / "rl.json").write_text(json.dumps(ev))
    (out / "eval" / "mid" / "none-s6.json").write_text(json.dumps(ev))
    (out / "models" / "rl" / "grpo.json").write_text(json.dumps({"from": str(out.resolve() / "models" / "base")}))
    (out / "models" / "rl" / "model.safetensors").write_bytes(b"x" * 100)
    dest = collect(out, tmp_path / "data")
    assert dest == tmp_path / "data" / "base2"
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [
        "config.json",
        "data_stats.json",
        "eval/mid/none-s6.json",
        "eval/refs/rl.json",
        "rl/grpo.json",
        "stages/rl.json",
    ]
    assert json.loads((dest / "data_stats.json").read_text())["splits"] == {
        "dev": {"problems": 3},
        CONFIRM: {"problems": 7},
    }
    assert json.loads((dest / "eval" / "refs" / "rl.json").read_text())["models"][0]["model"] == "models/rl"
    assert json.loads((dest / "rl" / "grpo.json").read_text())["from"] == "models/base"


def test_a_folders_report_reads_the_references_of_the_confirmatory_split(tmp_path):
    """With --eval-splits ...,heldout_confirm the base and RL models have that split in eval/refs/ only."""
    from experiments.flywheel.config import FULL
    from experiments.flywheel.report import write_report

    out = tmp_path / "exp"
    splits = (CONFIRM, "heldout")
    rng = np.random.default_rng(0)

    def model(it, names):
        return {
            "iteration": it,
            **{s: {"accuracy": 0.5, "loss": 0.1, "correct": rng.integers(0, 2, 20).tolist()} for s in names},
        }

    for sub in ("eval/refs", "eval/mid", "stages"):
        (out / sub).mkdir(parents=True)
    for name in ("base", "rl"):
        (out / "eval" / f"{name}.json").write_text(json.dumps({"models": [model(None, ["heldout"])]}))
        (out / "eval" / "refs" / f"{name}.json").write_text(json.dumps({"models": [model(None, splits)]}))
    for arm in ("none", "online"):
        (out / "eval" / "mid" / f"{arm}-s6.json").write_text(json.dumps({"models": [model(80, splits)]}))
    res = write_report(out, FULL, splits)
    assert res["base"] == {CONFIRM: 0.5, "heldout": 0.5} and "online" in res["summary"]["table"]
