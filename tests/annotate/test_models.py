"""Every model check runs before the first forward pass: a bad RL model never costs a base pass, and an RL
model repaired after one keeps it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from remit.annotate import worker as worker_module
from remit.annotate.cli import main
from remit.annotate.config import AnnotateConfig
from remit.annotate.models import ModelError, check_positions, inspect_model, model_info, safetensors_header
from remit.annotate.worker import run_worker
from tests.annotate.runs import job


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def annotate(model_pair, corpus, out, base=None, rl=None, *extra: str) -> int:
    base_dir, rl_dir = model_pair
    argv = ["--base", str(base or base_dir), "--rl", str(rl or rl_dir), "--input", str(corpus)]
    return main([*argv, "--output", str(out), "--engine", "hf", "--seq-len", "48", "--progress-every", "1000", *extra])


def assert_nothing_scored(out: Path) -> None:
    assert not list(out.glob("shard-*")) and not list((out / "_work" / "base").glob("unit-*"))


def test_a_truncated_rl_checkpoint_fails_before_the_base_pass(model_pair, corpus, tmp_path, capsys):
    rl = copy_model(model_pair[1], tmp_path / "rl")
    weights = rl / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "out"
    assert annotate(model_pair, corpus, out, rl=rl) != 0
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err and "Traceback" not in err
    assert_nothing_scored(out)


def test_a_damaged_safetensors_header_is_named(model_pair, tmp_path):
    rl = copy_model(model_pair[1], tmp_path / "rl")
    weights = rl / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8  # the header's JSON starts here
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="header is not valid JSON"):
        safetensors_header(weights)


def test_a_resized_rl_vocabulary_fails_before_the_base_pass(model_pair, corpus, tmp_path, capsys):
    from transformers import AutoTokenizer

    from remit.annotate.demo import tiny_llama

    tok = AutoTokenizer.from_pretrained(str(model_pair[1]))
    rl = tmp_path / "rl-resized"
    tiny_llama(len(tok) + 64, seed=7).save_pretrained(rl)
    tok.save_pretrained(rl)
    out = tmp_path / "out"
    assert annotate(model_pair, corpus, out, rl=rl) != 0
    err = capsys.readouterr().err
    assert "output rows" in err and str(rl) in err and "Traceback" not in err
    assert_nothing_scored(out)


def test_weights_that_do_not_fit_the_config_are_refused(model_pair, tmp_path):
    rl = copy_model(model_pair[1], tmp_path / "rl")
    config = json.loads((rl / "config.json").read_text())
    config["intermediate_size"] += 8
    (rl / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"has shape .* in the checkpoint, but config\.json implies"):
        inspect_model(rl, "rl")


def test_a_sharded_checkpoint_missing_a_file_is_refused(model_pair, tmp_path):
    rl = copy_model(model_pair[1], tmp_path / "rl")
    names = list(safetensors_header(rl / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in names}}
    index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
    (rl / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="missing"):
        inspect_model(rl, "rl")


def test_seq_len_must_fit_both_models_positions(model_pair, tmp_path, capsys):
    rl = copy_model(model_pair[1], tmp_path / "rl")
    config = json.loads((rl / "config.json").read_text())
    config["max_position_embeddings"] = 32
    (rl / "config.json").write_text(json.dumps(config))
    facts = inspect_model(rl, "rl")
    for engine in ("hf", "vllm"):
        with pytest.raises(ModelError, match="max_position_embeddings = 32"):
            check_positions(facts, 48, engine)
    # Rotary positions: one unused position past the bound is allowed in vLLM, never in training terms.
    assert check_positions(facts, 32, "vllm") is True and check_positions(facts, 31, "hf") is False
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    assert annotate(model_pair, corpus, tmp_path / "out", rl=rl) != 0
    assert "--seq-len 48" in capsys.readouterr().err


def test_model_hashes_are_cached(model_pair, tmp_path, monkeypatch):
    from remit.annotate import hashcache

    monkeypatch.setenv("REMIT_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = hashcache._hash_file
    monkeypatch.setattr(hashcache, "_hash_file", lambda p: calls.append(p) or real(p))
    first = model_info(model_pair[0])
    n = len(calls)
    assert n >= 2 and model_info(model_pair[0]) == first and len(calls) == n


def test_a_repaired_rl_model_keeps_the_base_pass(model_pair, corpus, tmp_path, monkeypatch, one_thread):
    """The RL model fails to load after the base pass (a fault the header checks cannot see); once it is
    replaced in place, the run continues with the saved base pass and gives a clean run's shards."""
    rl = copy_model(model_pair[1], tmp_path / "rl")
    kwargs = job(model_pair, corpus, tmp_path / "out", rl=str(rl))
    real = worker_module.open_scorer

    def broken(engine, path, settings):
        if Path(path) == rl:
            raise RuntimeError(f"{path}: cannot load")
        return real(engine, path, settings)

    monkeypatch.setattr(worker_module, "open_scorer", broken)
    with pytest.raises(RuntimeError, match="cannot load"):
        run_worker(AnnotateConfig(**kwargs))
    monkeypatch.setattr(worker_module, "open_scorer", real)
    saved = sorted((tmp_path / "out" / "_work" / "base").glob("unit-*.npz"))
    assert saved
    # "Repair" the RL model: same folder, new bytes (its hash changes).
    weights = rl / "model.safetensors"
    weights.write_bytes(weights.read_bytes())
    config = json.loads((rl / "config.json").read_text())
    (rl / "config.json").write_text(json.dumps(config, indent=1))
    stats, plan = run_worker(AnnotateConfig(**kwargs))
    assert plan is not None and stats.tokens_base == 0 and stats.tokens_rl == stats.tokens > 0
