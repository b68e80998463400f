"""Every supported architecture against transformers, on tiny models whose every tensor is random:
logits (one document and packed documents), export back to HF, tensor parallelism, and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.tiny_models import ARCHS, VOCAB, load_hf, make_tiny, packed_batch

pytestmark = [
    pytest.mark.megatron,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {name: make_tiny(name, root / name, seed=i) for i, name in enumerate(ARCHS)}


def _mcore(hf_dir: Path, attention: str = "sdpa", seq_len: int = 64):
    from remit.train.architecture import read_architecture
    from remit.train.convert import check_hf_checkpoint, load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    arch = read_architecture(hf_dir)
    check_hf_checkpoint(hf_dir, arch)
    model = build_gpt_model(arch, transformer_config(arch, attention=attention), seq_len, attention)
    load_hf_into(model, hf_dir, arch, 0, 1)
    return model.eval(), arch


def _logits(model, batch, attention: str = "sdpa") -> torch.Tensor:
    from remit.train.model import forward_tokens

    with torch.no_grad():
        return forward_tokens(model, batch, attention).float()


def _one_doc(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    b, s = ids.shape
    return {
        "tokens": ids,
        "position_ids": torch.arange(s).expand(b, s),
        "segment_ids": torch.zeros(b, s, dtype=torch.long),
    }


# --- the fixtures exercise each feature --------------------------------------------------------------


def _without_feature(name: str, hf_dir: Path, out: Path) -> Path:
    """A copy of the model with its distinguishing feature switched off (Llama 2: its own output layer)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(hf_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    weights = load_file(str(out / "model.safetensors"))
    if name.startswith("llama3") or name == "llama-linear":
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    elif name == "mistral":
        cfg["sliding_window"] = None
    elif name == "qwen2":
        weights = {k: (torch.zeros_like(v) if k.endswith(".bias") else v) for k, v in weights.items()}
    elif name == "qwen2-window":
        cfg["use_sliding_window"] = False
        cfg.pop("layer_types", None)
    elif name == "qwen3":
        weights = {k: (torch.ones_like(v) if "q_norm" in k or "k_norm" in k else v) for k, v in weights.items()}
    elif name == "smollm3":
        cfg["no_rope_layers"] = [1] * cfg["num_hidden_layers"]
    elif name == "llama2":
        cfg["tie_word_embeddings"] = True
        weights.pop("lm_head.weight")
    else:
        raise AssertionError(f"no feature to switch off for {name}")
    (out / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("name", list(ARCHS))
def test_the_fixture_feature_changes_the_logits(tiny, name, tmp_path):
    """Equality with transformers below means something only if the feature matters in the fixture."""
    off = _without_feature(name, tiny[name], tmp_path / "off")
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (load_hf(tiny[name])(ids).logits - load_hf(off)(ids).logits).abs().max().item()
    assert diff > 1e-2, f"{name}: switching the feature off changes the logits by only {diff}"


# --- logits against transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_equal_transformers(mcore, tiny, name):
    model, _ = _mcore(tiny[name])
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = load_hf(tiny[name])(ids).logits
    got = _logits(model, _one_doc(ids))
    assert (got - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("attention", ["sdpa", "dense"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_packed_documents_equal_each_document_alone(mcore, tiny, name, attention):
    """Rows of several documents (positions restarting at each), the last row padded: every document's
    logits equal transformers' on that document alone. Documents are longer than the sliding windows."""
    model, _ = _mcore(tiny[name], attention)
    batch = packed_batch([[13, 1, 20, 14], [30, 9], [5, 22]], seed=3, pad_to=48)
    got = _logits(model, batch, attention)
    hf = load_hf(tiny[name])
    worst = 0.0
    for r, start, n in batch["docs"]:
        with torch.no_grad():
            ref = hf(batch["tokens"][r : r + 1, start : start + n]).logits[0]
        worst = max(worst, (got[r, start : start + n] - ref).abs().max().item())
    assert worst <= TOL, f"{name}/{attention}: max |diff| {worst}"


@pytest.mark.parametrize("name", list(ARCHS))
def test_export_reloads_in_transformers_with_the_same_logits(mcore, tiny, name, tmp_path):
    from remit.train.convert import gather_full_state, read_hf_weights, save_hf

    model, _ = _mcore(tiny[name])
    out = save_hf(gather_full_state(model, None), tiny[name], tmp_path / "export")
    assert (out / "config.json").read_bytes() == (tiny[name] / "config.json").read_bytes()
    original, back = read_hf_weights(tiny[name]), read_hf_weights(out)
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(4))
    reloaded = load_hf(out)
    assert type(reloaded).__name__ == type(load_hf(tiny[name])).__name__
    with torch.no_grad():
        assert (reloaded(ids).logits - _logits(model, _one_doc(ids))).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["mistral", "qwen2-window", "qwen3", "smollm3"])
def test_the_training_data_path_reproduces_the_scored_log_probs(mcore, tiny, name, tmp_path):
    """An annotation output scored with the model itself (each segment as its own prompt), read by the
    training dataset (rows of several documents, positions restarting, a padded last row) and run
    through the packed forward: every label's log-prob equals the stored one, sliding windows shorter
    than the documents included."""
    import numpy as np

    from remit.train.dataset import RemitDataset, collate
    from remit.train.loader import to_device
    from remit.train.model import forward_tokens
    from tests.train.scored import make_scored_output

    seq = 48
    out = make_scored_output(tmp_path / "o", tiny[name], tiny[name], "sha256:none", seq_len=seq, seed=3)
    ds = RemitDataset(out, seq_len=seq, create_attention_mask=False)
    assert any(len(ds.row(i)[3]) > 1 for i in range(len(ds))), "rows must pack several documents"
    model, _ = _mcore(tiny[name], seq_len=seq)
    batch = to_device(collate([ds[i] for i in range(len(ds))]), torch.device("cpu"))
    with torch.no_grad():
        loss = forward_tokens(model, batch, "sdpa")
    stored = []
    column = ds.output.read(0, columns=["logp_base"]).column("logp_base")
    for i in range(len(ds)):
        t = column[i].values.to_numpy(zero_copy_only=False)
        row = np.zeros(seq, np.float32)
        row[: len(t) - 1] = np.nan_to_num(t[1:])
        stored.append(row)
    valid = batch["loss_mask"] > 0
    assert valid.sum() > 100
    torch.testing.assert_close(-loss[valid], torch.from_numpy(np.stack(stored))[valid], rtol=0, atol=2e-5)


@pytest.mark.slow
def test_remit_train_runs_and_exports_other_architectures(tiny, tmp_path):
    """`remit-train` end to end on a windowed Mistral and a tied Qwen2 with q/k/v biases: two steps of
    `online` training on an output scored with the model, export, and transformers reloads the export
    as the same class with logits that moved but stayed finite."""
    from transformers import AutoModelForCausalLM

    from remit.train.convert import read_hf_weights
    from tests.train.scored import make_scored_output

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    for name in ("mistral", "qwen2"):
        data = make_scored_output(tmp_path / f"data-{name}", tiny[name], tiny[name], "sha256:none", seq_len=32)
        run, export = tmp_path / f"run-{name}", tmp_path / f"hf-{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "remit.train", "--data", str(data), "--init-hf", str(tiny[name]), "--save",
             str(run), "--weights", "online", "--train-iters", "2", "--micro-batch-size", "2",
             "--global-batch-size", "4", "--lr", "1e-3", "--export-hf", str(export)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert f"remit-train: {name}," in proc.stdout
        original, trained = read_hf_weights(tiny[name]), read_hf_weights(export)
        assert set(trained) == set(original)
        assert all(torch.isfinite(t).all() for t in trained.values())
        assert any(not torch.equal(trained[k], original[k]) for k in original)
        reloaded = load_hf(export)
        assert type(reloaded) is type(AutoModelForCausalLM.from_pretrained(tiny[name]))
        ids = torch.randint(3, VOCAB, (1, 24), generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            moved = (reloaded(ids).logits - load_hf(tiny[name])(ids).logits).abs().max().item()
        assert 0 < moved < 50


def test_inv_freq_follows_the_llama3_formula():
    """The llama3 band edges: short wavelengths kept, long ones divided by `factor`, the middle blended."""
    from remit.train.architecture import architecture_from_config
    from tests.train.tiny_models import hf_config

    arch = architecture_from_config(hf_config("llama3.1").to_dict())
    plain = 1.0 / (arch.rope_theta ** (torch.arange(0, arch.head_dim, 2).float() / arch.head_dim))
    wavelen = 2 * torch.pi / plain
    got = arch.inv_freq()
    short, long = wavelen < 64 / 4, wavelen > 64 / 1
    assert short.any() and long.any() and (~short & ~long).any()
    torch.testing.assert_close(got[short], plain[short], rtol=0, atol=0)
    torch.testing.assert_close(got[long], plain[long] / 8, rtol=1e-6, atol=0)
    mid = ~short & ~long
    assert ((got[mid] < plain[mid]) & (got[mid] > plain[mid] / 8)).all()


@pytest.mark.slow
def test_tensor_parallel_2_equals_transformers(tiny, tmp_path):
    """Two gloo ranks, TP=2: vocab-parallel logits gathered equal transformers', and the gathered full
    state converts back to the original tensors, for biases, q/k norms, NoPE layers and windows."""
    names = ["qwen2", "qwen3", "smollm3", "mistral", "llama3.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    worker = Path(__file__).with_name("tp_arch_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(worker)]
    proc = subprocess.run(
        cmd + [str(tmp_path)] + [f"{n}={tiny[n]}" for n in names],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads((tmp_path / "tp_result.json").read_text())
    assert set(result) == set(names)
    for name, r in result.items():
        assert r["logits"] <= TOL and r["packed"] <= TOL and r["round_trip"] == 0.0, (name, r)


def test_export_writes_the_template_dtype_and_refuses_values_it_cannot_hold(mcore, tiny, tmp_path):
    """The export takes the dtype of the template's config.json (dtype, or torch_dtype in older files):
    a float16 Llama 2 comes back in float16. A weight that overflows it would be written as inf: refused."""
    import shutil

    from remit.train.convert import gather_full_state, read_hf_weights, save_hf

    template = tmp_path / "fp16"
    shutil.copytree(tiny["llama2"], template)
    cfg = json.loads((template / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "float16"
    (template / "config.json").write_text(json.dumps(cfg))
    model, _ = _mcore(tiny["llama2"])
    state = gather_full_state(model, None)
    back = read_hf_weights(save_hf(state, template, tmp_path / "out"))
    assert {t.dtype for t in back.values()} == {torch.float16}
    state["decoder.layers.1.mlp.linear_fc2.weight"] = state["decoder.layers.1.mlp.linear_fc2.weight"] * 1e6
    with pytest.raises(ValueError) as e:
        save_hf(state, template, tmp_path / "overflow")
    assert "model.layers.1.mlp.down_proj.weight" in str(e.value) and "float16" in str(e.value)
    assert not (tmp_path / "overflow" / "model.safetensors").exists()
