"""The trainer from random weights (--init-config) on a pack-only output, and the new weight modes
through Megatron's global normalisation. Real trainer, tiny model, subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.megatron
REPO = Path(__file__).resolve().parents[2]


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "remit.train", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"


def _losses(run: Path, key: str = "loss") -> list[float]:
    from remit.train.metrics import read_metrics

    return [r[key] for r in read_metrics(run)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory, model_pair) -> tuple[Path, Path]:
    """(pack-only output of the sample corpus, a folder holding only the base model's config.json)."""
    from remit.annotate.cli import main
    from remit.annotate.demo import sample_corpus_path

    root = tmp_path_factory.mktemp("rand")
    out = root / "packed"
    args = ["pack", "--tokenizer", str(model_pair[0]), "--input", str(sample_corpus_path()), "--output", str(out)]
    assert main([*args, "--seq-len", "32", "--rows-per-shard", "64"]) == 0
    cfg = json.loads((model_pair[0] / "config.json").read_text())
    cfg["initializer_range"] = 0.1  # not the default: shows it is the config that initialises
    (root / "cfg").mkdir()
    (root / "cfg" / "config.json").write_text(json.dumps(cfg))
    return out, root / "cfg" / "config.json"


def _common(data: Path, save: Path, *extra: str) -> list[str]:
    flags = ["--data", str(data), "--save", str(save), "--micro-batch-size", "2", "--global-batch-size", "4"]
    return [*flags, "--lr", "1e-3", "--skip-validate", *extra]


def test_random_init_trains_is_seeded_and_exports_a_usable_hf_folder(packed, tmp_path, model_pair):
    data, cfg = packed
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _ok(
        _train(
            *_common(data, a, "--weights", "none", "--init-config", str(cfg), "--train-iters", "3"),
            "--seed",
            "5",
            "--export-hf",
            str(tmp_path / "hf"),
        )
    )
    _ok(
        _train(
            *_common(data, b, "--weights", "none", "--init-config", str(cfg.parent), "--train-iters", "3"),
            "--seed",
            "5",
        )
    )
    _ok(_train(*_common(data, c, "--weights", "none", "--init-config", str(cfg), "--train-iters", "1"), "--seed", "6"))
    la, lb, lc = _losses(a), _losses(b), _losses(c)
    assert la == lb  # the same seed (file or folder): the same model and the same run
    assert la[0] != lc[0]  # another seed: other weights (and another data order)
    vocab = json.loads(cfg.read_text())["vocab_size"]
    assert abs(la[0] - np.log(vocab)) < 1.0  # a random model: about uniform over the vocabulary

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from remit.shards import read_manifest
    from remit.train.preflight import tokenizer_sha256

    hf = tmp_path / "hf"
    assert tokenizer_sha256(hf) == read_manifest(data).tokenizer_hash == tokenizer_sha256(model_pair[0])
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("two plus two", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == vocab


def test_the_initialiser_follows_the_config(packed):
    from remit.train.architecture import read_architecture
    from remit.train.random_init import random_hf_state

    folder = packed[1].parent
    cfg = json.loads(packed[1].read_text())
    arch = read_architecture(folder)
    a = random_hf_state(folder, arch, 1)["model.layers.0.mlp.up_proj.weight"]
    assert random_hf_state(folder, arch, 1)["model.layers.0.mlp.up_proj.weight"].equal(a)
    assert not random_hf_state(folder, arch, 2)["model.layers.0.mlp.up_proj.weight"].equal(a)
    assert abs(float(a.std()) - cfg["initializer_range"]) < 0.01  # transformers' normal(0, initializer_range)


@pytest.mark.parametrize("name", ["llama3.2", "mistral", "qwen2", "qwen3", "smollm3"])
def test_random_init_of_every_family_is_transformers_model_and_loads_exactly(mcore, name, tmp_path):
    """The random state is that of the config's own transformers class under the seed, and the Megatron
    model filled from it gives that model's logits."""
    import torch
    from transformers import AutoModelForCausalLM

    from remit.train.architecture import SUPPORTED, read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, forward_tokens, transformer_config
    from remit.train.random_init import random_hf_state
    from tests.train.tiny_models import VOCAB, hf_config

    config = hf_config(name)
    config.save_pretrained(tmp_path)
    arch = read_architecture(tmp_path)
    state = random_hf_state(tmp_path, arch, seed=11)
    torch.manual_seed(11)
    reference = AutoModelForCausalLM.from_config(hf_config(name), dtype=torch.float32).eval()
    assert type(reference).__name__ == SUPPORTED[arch.model_type]
    ref_state = reference.state_dict()
    assert set(state) == set(ref_state)
    for key, value in ref_state.items():
        assert torch.equal(state[key], value.float()), key
    model = build_gpt_model(arch, transformer_config(arch, attention="sdpa"), 64, "sdpa")
    load_hf_into(model, "random", arch, 0, 1, weights=state)
    ids = torch.randint(3, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
    batch = {
        "tokens": ids,
        "position_ids": torch.arange(24).expand(2, 24),
        "segment_ids": torch.zeros(2, 24, dtype=torch.long),
    }
    with torch.no_grad():
        got = forward_tokens(model.eval(), batch, "sdpa").float()
        want = reference(ids).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_a_config_of_an_unsupported_family_is_refused_in_one_line(packed, tmp_path):
    data, cfg = packed
    gemma = {**json.loads(cfg.read_text()), "model_type": "gemma", "architectures": ["GemmaForCausalLM"]}
    (tmp_path / "gemma").mkdir()
    (tmp_path / "gemma" / "config.json").write_text(json.dumps(gemma))
    proc = _train(
        *_common(data, tmp_path / "run", "--weights", "none", "--init-config", str(tmp_path / "gemma")),
        "--train-iters",
        "1",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "model_type" in last and "gemma" in last and "not supported" in last


def test_weighted_modes_refuse_a_pack_only_output(packed, tmp_path):
    data, cfg = packed
    for mode in ("static", "online", "shuffled", "rho1"):
        proc = _train(
            *_common(data, tmp_path / mode, "--weights", mode, "--init-config", str(cfg), "--train-iters", "1")
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert "pack-only output" in last and "--weights none" in last and "Traceback" not in proc.stderr


def test_random_init_without_a_tokenizer_anywhere_is_refused(packed, tmp_path):
    data, cfg = packed
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["tokenizer"]["path"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    proc = _train(
        *_common(moved, tmp_path / "run", "--weights", "none", "--init-config", str(cfg), "--train-iters", "1")
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no tokenizer beside the config" in proc.stderr and "gone" in proc.stderr


@pytest.fixture(scope="module")
def scored(tmp_path_factory, model_pair) -> Path:
    from remit.shards.synthetic import make_output
    from remit.train.preflight import tokenizer_sha256

    return make_output(
        tmp_path_factory.mktemp("scored") / "out",
        n_docs=40,
        seq_len=32,
        vocab=800,
        doc_len=(3, 60),
        rows_per_shard=8,
        seed=21,
        tokenizer_sha256=tokenizer_sha256(model_pair[0]),
    )


def test_rho1_with_keep_ratio_one_trains_exactly_like_none(scored, model_pair, tmp_path):
    init = ["--init-hf", str(model_pair[0]), "--train-iters", "3", "--seed", "2"]
    _ok(_train(*_common(scored, tmp_path / "none", "--weights", "none", *init)))
    _ok(_train(*_common(scored, tmp_path / "rho1", "--weights", "rho1", "--keep-ratio", "1.0", *init)))
    _ok(_train(*_common(scored, tmp_path / "half", "--weights", "rho1", "--keep-ratio", "0.5", *init)))
    assert _losses(tmp_path / "rho1") == _losses(tmp_path / "none")
    assert _losses(tmp_path / "rho1", "grad_norm") == _losses(tmp_path / "none", "grad_norm")
    half = _losses(tmp_path / "half", "mean_weight")
    assert all(abs(w - 0.5) < 0.02 for w in half)  # the kept share, per global batch
    # the objective is the mean over the kept tokens (those the RL model likes more than the model does)
    assert _losses(tmp_path / "half")[0] != _losses(tmp_path / "half", "loss_unweighted")[0]
    assert _losses(tmp_path / "half", "loss_unweighted")[0] == _losses(tmp_path / "none", "loss_unweighted")[0]
