"""The flywheel experiment: its data generator, GRPO pieces and statistics against slow references,
and the quick mode end to end (every stage runs and the results table is complete; not the effect)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.flywheel.data import (
    MAX_OPERAND,
    MAX_VALUE,
    NOISY,
    SPLITS,
    TRAIN_TEMPLATES,
    UNSEEN_TEMPLATES,
    DataConfig,
    generate,
    make_problem,
    parse_answer,
    read_jsonl,
)
from experiments.flywheel.grpo import advantages, policy_loss
from experiments.flywheel.report import paired_bootstrap, paired_t

REPO = Path(__file__).resolve().parents[2]
EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


def _check_chain(question: str, solution: str) -> tuple[int, int, int]:
    """(equations whose arithmetic is wrong, breaks in the chain, the stated answer), recomputed from text."""
    eqs = [(int(a), op, int(b), int(c)) for a, op, b, c in EQ.findall(solution)]
    wrong = sum((a + b if op == "+" else a - b) != c for a, op, b, c in eqs)
    breaks = sum(eqs[i][0] != eqs[i - 1][3] for i in range(1, len(eqs)))
    assert str(eqs[0][0]) in question and all(str(b) in question for _, _, b, _ in eqs)
    return wrong, breaks, parse_answer(solution)


def _solutions(folder: Path, split: str) -> list[str]:
    """The worked solutions of a split, read from its JSONL (training splits: problem documents only)."""
    rows = read_jsonl(folder / f"{split}.jsonl")
    if split in NOISY:
        return [r["text"].split("\nAnswer: ")[1] for r in rows if r["kind"] == "problem"]
    return [r["solution"] for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate(DataConfig(pretrain=1500, anneal=600, rl=200, dev=100, heldout=150, heldout_templates=150, seed=3), out)
    return out


def test_splits_are_disjoint_by_numbers_and_templates(data):
    sigs: dict[str, set] = {}
    for split in SPLITS:
        sols = _solutions(data, split)
        # the signature, read back from the worked solution: start value, then each operation and operand
        sigs[split] = {
            tuple((a, op, b) if i == 0 else (op, b) for i, (a, op, b, _) in enumerate(EQ.findall(x))) for x in sols
        }
        if split not in NOISY:  # the training splits may repeat their own chains in other words
            assert len(sigs[split]) == len(sols)
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not sigs[a] & sigs[b], (a, b)
    unseen = read_jsonl(data / "heldout_templates.jsonl")
    assert {r["template"] for r in unseen} <= {f"u{i}" for i in range(len(UNSEEN_TEMPLATES))}
    # No sentence frame of the unseen templates occurs in training (their single words may, in the filler text).
    train_text = (data / "pretrain.jsonl").read_text() + (data / "anneal.jsonl").read_text()
    unseen_text = (data / "heldout_templates.jsonl").read_text()
    for t in UNSEEN_TEMPLATES:
        for frame in [t["start"], *t["add"], *t["sub"], t["ask"]]:
            pattern = re.sub(r"\\\{\w+\\\}", r"\\S+", re.escape(frame))
            assert not re.search(pattern, train_text), frame
        assert re.search(re.sub(r"\\\{\w+\\\}", r"\\S+", re.escape(t["start"])), unseen_text)  # the check can fire


def test_clean_splits_are_correct_and_noise_is_where_it_is_said(data):
    for split in ("rl", "dev", "heldout", "heldout_templates"):
        for r in read_jsonl(data / f"{split}.jsonl"):
            wrong, breaks, stated = _check_chain(r["question"], r["solution"])
            assert wrong == 0 and breaks == 0 and stated == r["answer"]
            assert r["prompt"].endswith("\nAnswer:")
    stats = json.loads((data / "stats.json").read_text())
    for split in NOISY:
        rows = [r for r in read_jsonl(data / f"{split}.jsonl") if r["kind"] == "problem"]
        kinds = {"": 0, "step": 0, "answer": 0}
        for r in rows:
            q, sol = r["text"].split("\nAnswer: ")
            wrong, breaks, stated = _check_chain(q, sol)
            last = EQ.findall(sol)[-1][3]
            if r["noise"] == "":
                assert wrong == 0 and stated == int(last)
            elif r["noise"] == "step":
                assert wrong == 1 and breaks == 0 and stated == int(last)  # one wrong result, carried on
            else:
                assert wrong == 0 and stated != int(last)  # right chain, wrong final number
            kinds[r["noise"]] += 1
        share = (kinds["step"] + kinds["answer"]) / len(rows)
        assert abs(share - 0.3) < 0.05 and kinds["step"] == stats["splits"][split]["noisy_step"]
        texts = [r for r in read_jsonl(data / f"{split}.jsonl") if r["kind"] == "text"]
        assert len(texts) == stats["splits"][split]["text_documents"] > 0 and not any(
            EQ.search(t["text"]) for t in texts
        )


def test_every_split_holds_the_same_mix_of_chain_lengths(tmp_path):
    """The evaluation and RL splits draw first and own their chains; the training splits must still get
    their share of each length (counted from the solutions, not from stats.json). Here the splits before
    them take about 1,400 of the 1,663 two-step chains: a generator that redraws the length after a
    rejected draw gives the training splits about one two-step problem in four instead of one in two."""
    cfg = DataConfig(pretrain=1200, anneal=400, rl=1800, dev=200, heldout=400, heldout_templates=400, steps=(2, 3))
    stats = generate(cfg, tmp_path)
    for split in SPLITS:
        lengths = [len(EQ.findall(x)) for x in _solutions(tmp_path, split)]
        share = sum(n == 2 for n in lengths) / len(lengths)
        assert abs(share - 0.5) < 0.06, (split, share)
        assert stats["splits"][split]["by_steps"] == {"2": lengths.count(2), "3": lengths.count(3)}


def test_running_out_of_chains_of_one_length_is_an_error_naming_it(tmp_path):
    # about 2,000 two-step problems, each chain once, from 1,663 chains
    cfg = DataConfig(pretrain=300, anneal=100, rl=10, dev=10, heldout=2000, heldout_templates=2000, steps=(2, 3))
    with pytest.raises(ValueError, match="heldout_templates: .* free 2-step number chains"):
        generate(cfg, tmp_path)


def test_every_intermediate_value_stays_in_range():
    rng = np.random.default_rng(0)
    for _ in range(500):
        p = make_problem(rng, "t0", TRAIN_TEMPLATES[0], 0.5, int(rng.integers(2, 5)))
        for a, _, b, c in EQ.findall(p.solution):
            assert 0 <= int(a) <= MAX_VALUE and 0 <= int(c) <= MAX_VALUE and 1 <= int(b) <= MAX_OPERAND
        assert 0 <= p.answer <= MAX_VALUE


def test_parse_answer_takes_the_first_statement():
    assert parse_answer(" 3 + 4 = 7. The answer is 7. The answer is 8.") == 7
    assert parse_answer("The answer is .") is None and parse_answer("") is None


def test_advantages_match_a_loop():
    rng = np.random.default_rng(1)
    r = rng.integers(0, 2, 24).astype(float)
    got = advantages(r, 6)
    for g in range(4):
        grp = r[g * 6 : (g + 1) * 6]
        ref = (grp - grp.mean()) / (grp.std() + 1e-4)
        np.testing.assert_allclose(got[g * 6 : (g + 1) * 6], ref)
    assert np.all(advantages(np.ones(8), 4) == 0)  # no signal in a group that all solved it


def test_policy_loss_matches_a_per_sequence_reference():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    comps = [[20, 21, 2], [22], [23, 24, 25, 2]]
    adv = np.array([1.5, -0.5, 0.25])
    got = policy_loss(model, prompts, comps, adv, pad_id=2)
    total, count = 0.0, 0
    for p, c, a in zip(prompts, comps, adv):
        ids = torch.tensor([p + c])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1).detach()
        for j, tok in enumerate(c):
            total += -a * float(logp[len(p) - 1 + j, tok])
            count += 1
    assert float(got.detach()) == pytest.approx(total / count, rel=1e-5, abs=1e-6)


def test_paired_statistics():
    t = paired_t([0.02, 0.04, 0.03])
    half = 4.303 * np.std([0.02, 0.04, 0.03], ddof=1) / math.sqrt(3)
    assert t["mean"] == pytest.approx(0.03) and t["hi"] - t["mean"] == pytest.approx(half)
    same = [np.array([1, 0, 1, 1]), np.array([0, 0, 1, 0])]
    b = paired_bootstrap(same, same)
    assert b["mean"] == 0 and b["lo"] == 0 and b["hi"] == 0
    up = paired_bootstrap([np.ones(50)], [np.zeros(50)])
    assert up["mean"] == 1 and up["lo"] == 1


def test_set_changes_one_field_and_names_a_bad_one():
    from experiments.flywheel.config import FULL, changed_fields, set_field

    cfg = set_field(set_field(set_field(FULL, "data.noise_rate=0.5"), "mid.iters=160"), "data.steps=[2,3]")
    assert (cfg.data.noise_rate, cfg.mid.iters, cfg.data.steps) == (0.5, 160, (2, 3))
    assert set_field(FULL, "eps=1").eps == 1.0 and isinstance(set_field(FULL, "eps=1").eps, float)
    assert changed_fields(json.loads(json.dumps(FULL.to_dict())), cfg) == ["data.noise_rate", "data.steps", "mid.iters"]
    assert changed_fields(json.loads(json.dumps(FULL.to_dict())), set_field(FULL, "seeds=[7]")) == []
    # a config.json written before a field existed: the field counts as its default (what that run used)
    older = json.loads(json.dumps(FULL.to_dict()))
    del older["base_seed"], older["rl"]["kl_coef"]
    assert changed_fields(older, FULL) == []
    assert changed_fields(older, set_field(FULL, "base_seed=2")) == ["base_seed"]
    assert changed_fields(older, set_field(FULL, "rl.kl_coef=0.1")) == ["rl.kl_coef"]
    for bad, words in [
        ("data.noise=1", "data has no field 'noise'"),
        ("mid=3", "give one of its fields"),
        ("shape.hidden=1.5", "expected a int"),
        ("eps", "expected KEY=VALUE"),
        ("rl.temperature=true", "expected a float like 1.0"),
        ('seeds=["a"]', "expected a int like 1"),
        ("data.noise_rate=2", "data.noise_rate = 2.0: a share, between 0 and 1"),
        ("data.steps=[]", "data.steps = []: one or more chain lengths"),
        ("data.dev=0", "data.dev = 0: a split needs at least 1 problem"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            set_field(FULL, bad)


def test_a_value_no_stage_can_run_with_is_refused_before_any_stage(tmp_path, capsys):
    """check() names the field and what it needs; main refuses it with one line and writes nothing."""
    from experiments.flywheel.__main__ import main
    from experiments.flywheel.config import FULL, QUICK, check, set_field

    check(FULL)
    check(QUICK)
    for bad, words in [
        ("mid.iters=0", "mid.iters = 0: must be at least 1"),
        ("rl.temperature=0", "rl.temperature = 0.0: must be above 0"),
        ("rl.group_size=1", "rl.group_size = 1: must be at least 2"),
        ("pretrain.global_batch=12", "pretrain.global_batch = 12: must be a multiple of pretrain.micro_batch (16)"),
        ("mid.min_lr=0.1", "mid.min_lr = 0.1: must be between 0 and mid.lr (0.003)"),
        ("mid.warmup=80", "mid.warmup = 80: must be 0 or more and below mid.iters (80)"),
        ("mid.saves=0", "mid.saves = 0: must be between 1 and mid.iters (80)"),
        ("shape.hidden=100", "shape.hidden = 100: must be a multiple of shape.heads (3)"),
        ("shape.kv_heads=2", "shape.heads = 3: must be a multiple of shape.kv_heads (2)"),
        ("seq_len=1024", "shape.max_positions = 512: must be at least seq_len (1024)"),
        ("eps=1", "eps = 1.0: must be 0 or more and below 1"),
        ('arms=["none","typo"]', 'arms = ["none", "typo"]: must be arms among none,'),
        ("seeds=[]", "seeds = []: must be one seed or more"),
        ("engine=sglang", 'engine = "sglang": must be vllm or hf'),
        ("eval_limit=-1", "eval_limit = -1: must be 0 (all problems) or more"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            check(set_field(FULL, bad))
        out = tmp_path / bad.split("=")[0]
        assert main(["--out", str(out), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"flywheel: error: {words}" or (err.startswith("flywheel: error: " + words) and "\n" not in err)
        assert not out.exists(), f"{bad}: the output folder was created"


def test_an_output_made_with_another_configuration_is_refused(tmp_path, capsys):
    from experiments.flywheel.__main__ import main
    from experiments.flywheel.config import FULL, set_field

    saved = set_field(FULL, "data.noise_rate=0.5").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"quick": False, "config": saved}, default=list))
    assert main(["--out", str(tmp_path), "--seeds", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.noise_rate differ" in err and str(tmp_path) in err
    assert main(["--out", str(tmp_path), "--set", "data.noisy=1"]) == 2
    assert "has no field 'noisy'" in capsys.readouterr().err
    # a data stage that cannot be built is one line, not a traceback
    fresh = tmp_path / "fresh"
    sizes = ["--set", "data.heldout=2000", "--set", "data.heldout_templates=2000", "--set", "data.steps=[2,3]"]
    assert main(["--out", str(fresh), *sizes]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stage data: heldout_templates:" in err and "free 2-step" in err, err


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.megatron
def test_quick_mode_runs_every_stage(tmp_path):
    out = tmp_path / "fly"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.flywheel", "--quick", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    arms = ("none", "static", "online", "shuffled", "rho1", "online-sft", "oracle", "clean-online")
    want = {"data", "data-extra", "pretrain", "rl", "eval-base-rl", "annotate", "diagnose", "eval-mid", "report"}
    want |= {"sft", "annotate-sft", "diagnose-sft", "annotate-clean", "diagnose-clean", "oracle", "eval-post-rl"}
    want |= {f"mid-{a}-s1" for a in arms} | {"post-rl-online-s1"}
    assert want <= stages, want - stages
    from remit.shards import open_output, read_manifest

    assert read_manifest(out / "packed").scored is False and read_manifest(out / "annotated").scored is True
    # The weights are not trivial: the RL model moved away from the base, so the weighted arms train otherwise
    for folder in ("annotated", "annotated-sft", "annotated-clean"):
        tables = list(open_output(out / folder).iter_tables(columns=["weight", "logp_base"]))
        w = np.concatenate([np.concatenate(t.column("weight").to_numpy(zero_copy_only=False)) for t in tables])
        lb = np.concatenate([np.concatenate(t.column("logp_base").to_numpy(zero_copy_only=False)) for t in tables])
        assert w[~np.isnan(lb)].std() > 0.01, folder
    plain = (out / "models" / "mid" / "none-s1" / "model.safetensors").read_bytes()
    for arm in ("static", "online", "shuffled", "rho1", "online-sft", "oracle"):
        assert (out / "models" / "mid" / f"{arm}-s1" / "model.safetensors").read_bytes() != plain, arm
    res = json.loads((out / "results.json").read_text())
    table = res["summary"]["table"]
    assert set(table) == set(arms)
    for arm in arms:
        for split in ("heldout", "heldout_templates"):
            acc, loss = table[arm][split]["accuracy"], table[arm][split]["loss"]
            assert 0.0 <= acc[0] <= 1.0 and math.isfinite(loss[0]) and loss[0] > 0
            if arm != "none":
                assert set(table[arm][split]["vs_none"]) == {"t", "bootstrap", "loss_t"}
    assert set(res["summary"]["post_rl"]) == {"online"} and res["base"] and res["rl"]
    md = (out / "results.md").read_text()
    for arm in arms:
        assert f"| {arm} | 1 |" in md
    assert all(Path(p).stat().st_size > 1000 for p in res["plots"]) and len(res["plots"]) == 3
    for arm in arms:  # every arm trained the same number of tokens
        lines = (out / "runs" / "mid" / f"{arm}-s1" / "metrics.jsonl").read_text().splitlines()
        assert (
            json.loads(lines[-1])["tokens"]
            == json.loads((out / "runs" / "mid" / "none-s1" / "metrics.jsonl").read_text().splitlines()[-1])["tokens"]
        )


def _fake_run(out, base_seed: int, correct: dict[str, list[list[int]]], **config_changes) -> None:
    """An output folder as the experiment leaves it, holding only what the pooling reads."""
    from experiments.flywheel.config import FULL, set_field

    cfg = set_field(FULL, f"base_seed={base_seed}")
    for key, value in config_changes.items():
        cfg = set_field(cfg, f"{key}={value}")
    (out / "eval" / "mid").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"quick": False, "config": cfg.to_dict()}))

    def model(c: list[int], iteration) -> dict:
        loss = 2.0 - float(np.mean(c)) / 3 + 0.01 * len(c)  # differs between models, known to the test
        return {"iteration": iteration, "heldout": {"accuracy": float(np.mean(c)), "loss": loss, "correct": c}}

    for name in ("base", "rl"):
        (out / "eval" / f"{name}.json").write_text(json.dumps({"models": [model([0, 1, 0, 0], None)]}))
    for arm, per_seed in correct.items():
        for seed, c in enumerate(per_seed, 1):
            ev = {"models": [model([0] * len(c), 40), model(c, 80)]}  # the curve's checkpoints, then the last
            (out / "eval" / "mid" / f"{arm}-s{seed}.json").write_text(json.dumps(ev))


def test_pooling_over_base_models_matches_a_direct_computation(tmp_path, capsys):
    from experiments.flywheel.replicates import main, pool

    rng = np.random.default_rng(3)
    runs = []
    for b in range(3):
        c = {arm: rng.integers(0, 2, (2 + b, 40)).tolist() for arm in ("none", "online")}
        _fake_run(tmp_path / f"b{b}", b, c, **({"data.noise_rate": 0.5} if b == 2 else {}))
        runs.append(c)
    p = pool([tmp_path / f"b{b}" for b in range(3)], ("online",), "heldout")
    diffs = [[np.mean(o) - np.mean(n) for o, n in zip(c["online"], c["none"])] for c in runs]
    flat = [d for ds in diffs for d in ds]
    q = p["pooled"]["online"]
    assert q["pairs"]["n"] == 9 and q["pairs"]["mean"] == pytest.approx(np.mean(flat))
    half = 2.306 * np.std(flat, ddof=1) / 3  # t(8) over 9 pairs
    assert (q["pairs"]["lo"], q["pairs"]["hi"]) == pytest.approx((np.mean(flat) - half, np.mean(flat) + half))
    per_base = [np.mean(ds) for ds in diffs]
    assert q["per_base"]["mean"] == pytest.approx(np.mean(per_base))
    assert q["per_base"]["hi"] - q["per_base"]["mean"] == pytest.approx(4.303 * np.std(per_base, ddof=1) / np.sqrt(3))
    assert q["above_none"] == sum(d > 0 for d in flat) and q["below_none"] == sum(d < 0 for d in flat)
    assert q["bootstrap"]["mean"] == pytest.approx(np.mean(flat))
    assert q["loss_pairs"]["mean"] == pytest.approx(-np.mean(flat) / 3)  # loss = 2 - accuracy / 3 + const
    assert q["loss_per_base"]["mean"] == pytest.approx(-np.mean(per_base) / 3)
    assert [f["base_seed"] for f in p["folders"]] == [0, 1, 2]
    assert [f["differs"] for f in p["folders"]] == [[], [], ["data.noise_rate"]]
    assert main([str(tmp_path / f"b{b}") for b in range(3)] + ["--arms", "online"]) == 0
    shown = capsys.readouterr().out
    assert "b2 differs from" in shown and "data.noise_rate" in shown and f"{np.mean(flat) * 100:+.1f}" in shown
    assert p["post_rl"] == {}  # no folder has a second RL turn yet
    # a second RL turn in two folders (seed 1 of b0, seeds 1 and 2 of b1); b2 has it for `online` only
    after = {}
    for b, seeds in ((0, (1,)), (1, (1, 2)), (2, ())):
        (tmp_path / f"b{b}" / "eval" / "post_rl").mkdir()
        for seed in seeds:
            for arm in ("none", "online"):
                c = rng.integers(0, 2, 40).tolist()
                after[b, seed, arm] = np.mean(c)
                ev = {"models": [{"iteration": None, "heldout": {"accuracy": float(np.mean(c)), "loss": 1.0}}]}
                (tmp_path / f"b{b}" / "eval" / "post_rl" / f"{arm}-s{seed}.json").write_text(json.dumps(ev))
    (tmp_path / "b2" / "eval" / "post_rl" / "online-s1.json").write_text(json.dumps(ev))  # no none-s1: no pair
    q = pool([tmp_path / f"b{b}" for b in range(3)], ("online",), "heldout")["post_rl"]["online"]
    want = [after[b, s, "online"] - after[b, s, "none"] for b, s in ((0, 1), (1, 1), (1, 2))]
    assert q["pairs"] == 3 and q["after"]["mean"] == pytest.approx(np.mean(want))
    assert q["before"]["mean"] == pytest.approx(np.mean([diffs[0][0], diffs[1][0], diffs[1][1]]))
    # --seeds keeps those seeds in every folder
    only = pool([tmp_path / f"b{b}" for b in range(3)], ("online",), "heldout", seeds=(1, 2))
    two = [d for ds in diffs for d in ds[:2]]
    assert only["pooled"]["online"]["pairs"]["n"] == 6 and only["pooled"]["online"]["pairs"]["mean"] == pytest.approx(
        np.mean(two)
    )
    for flag, value, words in [
        ("--seeds", "1,x", "argument --seeds: expected comma-separated integers, got '1,x'"),
        ("--arms", "online,onlin", "argument --arms: unknown arm(s) ['onlin']; choose from none,"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main([str(tmp_path / "b0"), flag, value])
        assert stop.value.code == 2 and words in capsys.readouterr().err
    # a folder without `none` runs, or one that is not an output of the experiment: one line each
    _fake_run(tmp_path / "no-none", 4, {"online": [[1, 0]]})
    assert main([str(tmp_path / "no-none")]) == 2
    assert "no `none` runs" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "no-none" / "config.json").write_text("{not json")
    assert main([str(tmp_path / "no-none")]) == 2
    assert f"{tmp_path / 'no-none' / 'config.json'}: not a config.json the experiment wrote" in capsys.readouterr().err
