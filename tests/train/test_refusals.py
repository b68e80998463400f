"""What remit-train refuses to load, before any work, and how it says so: one line naming the file,
the key or tensor, the value and what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.tiny_models import hf_config, make_tiny

REPO = Path(__file__).resolve().parents[2]


def _refused(raw: dict, *needles: str) -> str:
    from remit.train.architecture import ArchitectureError, architecture_from_config

    with pytest.raises(ArchitectureError) as e:
        architecture_from_config(raw, "/ckpt/config.json")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("/ckpt/config.json: "), msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _cfg(name: str, **changes) -> dict:
    raw = hf_config(name).to_dict()
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


_DROP = object()


@pytest.mark.parametrize(
    "model_type, what",
    [
        ("olmo2", "post-norm"),
        ("gemma", "(1 + w) RMSNorm"),
        ("gemma2", "soft-capping"),
        ("gemma3_text", "sandwich norms"),
        ("phi3", "fused qkv"),
        ("mixtral", "mixture-of-experts"),
        ("qwen2_moe", "mixture-of-experts"),
        ("qwen3_moe", "mixture-of-experts"),
        ("deepseek_v3", "multi-head latent attention"),
    ],
)
def test_unsupported_families_are_refused_by_name(model_type, what):
    raw = {"model_type": model_type, "architectures": ["SomethingForCausalLM"], "hidden_size": 64}
    _refused(raw, f'model_type="{model_type}"', what, "SomethingForCausalLM")


def test_an_unknown_family_is_refused():
    _refused({"model_type": "brand_new", "architectures": ["NewForCausalLM"]}, "brand_new", "NewForCausalLM", "llama")


def test_architectures_must_match_model_type():
    _refused(_cfg("qwen2", model_type="llama", architectures=["Qwen2ForCausalLM"]), "architectures", "LlamaForCausalLM")


@pytest.mark.parametrize(
    "name, changes, needles",
    [
        (
            "llama3.1",
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
            ["rope_type", "yarn"],
        ),
        ("llama2", {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_parameters": _DROP}, ["dynamic"]),
        ("llama2", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, ["longrope"]),
        (
            "llama3.1",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "rope_theta": 1e4,
                    "original_max_position_embeddings": 64,
                }
            },
            ["low_freq_factor"],
        ),
        (
            "llama2",
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "mscale": 2}},
            ["mscale"],
        ),
        ("llama2", {"partial_rotary_factor": 0.5}, ["partial_rotary_factor", "0.5"]),
        ("llama2", {"attn_logit_softcapping": 50.0}, ["attn_logit_softcapping", "soft-capping"]),
        ("qwen2", {"final_logit_softcapping": 30.0}, ["final_logit_softcapping"]),
        ("mistral", {"num_local_experts": 8}, ["num_local_experts"]),
        ("llama2", {"hidden_act": "gelu"}, ["hidden_act", "gelu"]),
        ("llama2", {"attention_bias": True}, ["attention_bias"]),
        ("qwen3", {"attention_bias": True}, ["attention_bias"]),
        ("llama2", {"mlp_bias": True}, ["mlp_bias"]),
        ("llama2", {"sliding_window": 4096}, ["sliding_window", "4096", "mistral"]),
        ("mistral", {"layer_types": ["sliding_attention", "full_attention"]}, ["layer_types"]),
        ("qwen3", {"layer_types": ["chunked_attention", "full_attention"]}, ["layer_types[0]", "chunked_attention"]),
        (
            "smollm3",
            {
                "use_sliding_window": False,
                "sliding_window": 8,
                "layer_types": ["full_attention", "sliding_attention", "full_attention"],
            },
            ["use_sliding_window"],
        ),
        ("llama2", {"no_rope_layers": [1, 0]}, ["no_rope_layers"]),
        ("qwen2", {"attention_dropout": 0.1}, ["attention_dropout", "0.1"]),
        ("llama2", {"logits_scaling": 8.0}, ["logits_scaling"]),
    ],
)
def test_math_changing_keys_are_refused_by_name(name, changes, needles):
    _refused(_cfg(name, **changes), *needles)


def test_supported_configs_pass_with_their_defaults():
    """The real configs' conventions: old `rope_scaling` + top-level `rope_theta` (Llama 3.2), Qwen2.5's
    sliding_window with use_sliding_window false, SmolLM3's no_rope_layers, Qwen3's default head_dim."""
    from remit.train.architecture import architecture_from_config

    llama32 = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 128256,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "hidden_act": "silu",
    }
    a = architecture_from_config(llama32)
    assert (a.rope_type, a.rope_theta, a.tie_embeddings, a.head_dim) == ("llama3", 500000.0, True, 128)
    assert dict(a.rope_params)["original_max_position_embeddings"] == 8192
    qwen25 = {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "max_window_layers": 21,
        "tie_word_embeddings": True,
        "attention_dropout": 0.0,
    }
    q = architecture_from_config(qwen25)
    assert q.qkv_bias and not q.has_windows and q.head_dim == 64
    q3 = architecture_from_config(
        {"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 8}
    )
    assert q3.qk_norm and q3.head_dim == 128  # transformers' Qwen3 default, not hidden / heads
    smol = architecture_from_config({"model_type": "smollm3", "num_hidden_layers": 8})
    assert smol.rope_layers == (True, True, True, False) * 2 and smol.rope_theta == 2000000.0


# --- weights against the config ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    return make_tiny("qwen2", tmp_path_factory.mktemp("q2") / "qwen2", seed=3)


def _edit(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _check(hf_dir: Path) -> str:
    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import check_hf_checkpoint

    with pytest.raises(ArchitectureError) as e:
        check_hf_checkpoint(hf_dir, read_architecture(hf_dir))
    assert "\n" not in str(e.value) and str(hf_dir) in str(e.value)
    return str(e.value)


def test_a_qwen2_relabelled_as_llama_is_refused(qwen2_dir, tmp_path):
    """Relabelled in both model_type and architectures: the config passes, the leftover biases do not."""
    relabelled = _edit(qwen2_dir, tmp_path / "relabelled", model_type="llama", architectures=["LlamaForCausalLM"])
    msg = _check(relabelled)
    assert "q_proj.bias" in msg and "qwen2" in msg


def test_a_qwen3_relabelled_as_qwen2_is_refused(tmp_path):
    q3 = make_tiny("qwen3", tmp_path / "q3", seed=4)
    msg = _check(_edit(q3, tmp_path / "as-qwen2", model_type="qwen2", architectures=["Qwen2ForCausalLM"]))
    assert "q_norm" in msg or "k_norm" in msg


def test_tied_and_untied_must_match_the_weights(qwen2_dir, tmp_path):
    untied = _edit(qwen2_dir, tmp_path / "untied", tie_word_embeddings=False)
    assert "lm_head.weight" in _check(untied) and "tie_word_embeddings" in _check(untied)


def test_a_tied_model_with_its_own_lm_head_is_refused(qwen2_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import hf_to_mcore

    d = _edit(qwen2_dir, tmp_path / "own-head")
    weights = load_file(str(d / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"] + 1.0
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(ArchitectureError, match="lm_head.weight differs"):
        hf_to_mcore(load_file(str(d / "model.safetensors")), read_architecture(d), str(d))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()  # equal: accepted
    hf_to_mcore(weights, read_architecture(d))
    assert torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])


def test_shapes_must_match_the_config(qwen2_dir, tmp_path):
    msg = _check(_edit(qwen2_dir, tmp_path / "wide", intermediate_size=128))
    assert "has shape" in msg and "config.json implies" in msg


def test_a_missing_tensor_is_refused(qwen2_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _edit(qwen2_dir, tmp_path / "missing")
    weights = load_file(str(d / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(d / "model.safetensors"))
    assert "model.layers.1.mlp.up_proj.weight" in _check(d)


def test_stale_rope_buffers_are_checked(qwen2_dir, tmp_path):
    from safetensors.torch import load_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import hf_to_mcore

    arch = read_architecture(qwen2_dir)
    weights = load_file(str(qwen2_dir / "model.safetensors"))
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = arch.inv_freq()
    hf_to_mcore(weights, arch)  # consistent: consumed
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = arch.inv_freq() * 2
    with pytest.raises(ArchitectureError, match="RoPE frequencies"):
        hf_to_mcore(weights, arch)


@pytest.mark.megatron
def test_the_cli_refuses_a_relabelled_model_in_one_line_before_reading_data(qwen2_dir, tmp_path):
    relabelled = _edit(qwen2_dir, tmp_path / "relabelled", model_type="llama", architectures=["LlamaForCausalLM"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "remit.train",
            "--data",
            str(tmp_path / "no-such-output"),
            "--init-hf",
            str(relabelled),
            "--save",
            str(tmp_path / "run"),
            "--train-iters",
            "1",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("remit-train: error:")]
    assert len(errors) == 1 and "q_proj.bias" in errors[0] and "Traceback" not in proc.stderr


# --- flags and values that the checks above must not wave through --------------------------------------


@pytest.mark.parametrize(
    "key", ["use_qk_norm", "qk_layernorm", "use_parallel_residual", "parallel_attn", "sandwich_norm"]
)
def test_a_foreign_flag_set_to_true_is_refused(key):
    """`True == 1` in Python: a flag of another family set to true must not pass as a harmless 1."""
    _refused(_cfg("llama2", **{key: True}), key, "true")


@pytest.mark.parametrize("key", ["use_qk_norm", "use_parallel_residual", "sandwich_norm"])
def test_a_foreign_flag_set_to_false_passes(key):
    from remit.train.architecture import architecture_from_config

    assert architecture_from_config(_cfg("llama2", **{key: False})).model_type == "llama"


def test_a_config_transformers_rejects_is_refused_in_one_line():
    """transformers' own validation messages span several lines; the refusal stays one line."""
    _refused(_cfg("llama2", tie_word_embeddings=None), "tie_word_embeddings", "transformers cannot read")


@pytest.mark.parametrize("window", [0, -4])
def test_a_non_positive_sliding_window_is_refused(window):
    _refused(_cfg("mistral", sliding_window=window), "sliding_window", str(window))


def test_a_mistral_config_without_sliding_window_is_refused():
    """transformers' Mistral falls back to a 4096-token window: a Llama relabelled as Mistral would
    silently gain one. Every Mistral config states the key (null for full attention)."""
    _refused(_cfg("mistral", sliding_window=_DROP), "sliding_window", "4096")
    from remit.train.architecture import architecture_from_config

    assert not architecture_from_config(_cfg("mistral", sliding_window=None)).has_windows


def test_a_smollm3_config_with_an_unused_sliding_window_is_refused():
    """transformers' SmolLM3 ignores `sliding_window` without `use_sliding_window`: a windowed Mistral
    relabelled as SmolLM3 would lose its window (and gain NoPE layers) without a word."""
    raw = _cfg("mistral", model_type="smollm3", architectures=["SmolLM3ForCausalLM"])
    _refused(raw, "sliding_window", "use_sliding_window")


def test_a_smollm3_relabelled_as_llama_without_its_nope_list_is_refused():
    """Dropping `no_rope_layers` still leaves `no_rope_layer_interval`, SmolLM3's other NoPE key."""
    raw = _cfg("smollm3", model_type="llama", architectures=["LlamaForCausalLM"], no_rope_layers=_DROP)
    _refused(raw, "no_rope_layer_interval")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_saved_rope_buffers_in_half_precision_are_consumed(tmp_path, dtype):
    """Llama-2-7b-hf's safetensors hold every layer's `rotary_emb.inv_freq`, stored in the checkpoint's
    float16 and computed by older transformers from a float arange: equal to the config's frequencies
    at that precision, not to 1e-5. A buffer that is wrong at that precision is still refused."""
    import torch
    from safetensors.torch import load_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import hf_to_mcore

    d = make_tiny("llama2", tmp_path / "l2", seed=5)
    arch = read_architecture(d)
    weights = load_file(str(d / "model.safetensors"))
    old = 1.0 / (arch.rope_theta ** (torch.arange(0, arch.head_dim, 2).float() / arch.head_dim))
    for i in range(arch.num_layers):
        weights[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = old.to(getattr(torch, dtype))
    hf_to_mcore(weights, arch)
    weights["model.layers.1.self_attn.rotary_emb.inv_freq"] = (old * 1.05).to(getattr(torch, dtype))
    with pytest.raises(ArchitectureError, match="layers.1.self_attn.rotary_emb.inv_freq"):
        hf_to_mcore(weights, arch)


def test_saved_rope_buffers_of_linear_scaling_may_be_unscaled(tmp_path):
    """transformers before 4.32 saved the *unscaled* frequencies of a linear-scaled Llama (it divided the
    positions instead): those are the config's RoPE as well. Frequencies of another base are not."""

    from safetensors.torch import load_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import hf_to_mcore

    d = make_tiny("llama-linear", tmp_path / "lin", seed=6)
    arch = read_architecture(d)
    weights = load_file(str(d / "model.safetensors"))
    unscaled = arch.inv_freq() * dict(arch.rope_params)["factor"]
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = unscaled.half()
    hf_to_mcore(weights, arch)
    weights["model.layers.0.self_attn.rotary_emb.inv_freq"] = unscaled * 3
    with pytest.raises(ArchitectureError, match="RoPE frequencies"):
        hf_to_mcore(weights, arch)


def test_unreadable_safetensors_are_refused_in_one_line(qwen2_dir, tmp_path):
    """A truncated download or a shard the index names but the folder lacks: one line naming the file."""
    import torch

    from remit.train.architecture import read_architecture
    from remit.train.convert import check_hf_checkpoint, read_hf_weights

    arch = read_architecture(qwen2_dir)
    truncated = _edit(qwen2_dir, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:100])
    for call in (lambda: check_hf_checkpoint(truncated, arch), lambda: read_hf_weights(truncated)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and str(truncated / "model.safetensors") in msg and "download" in msg, msg
    # the header is intact, the data is cut short: only reading the tensors notices
    cut = _edit(qwen2_dir, tmp_path / "cut")
    (cut / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="download"):
        read_hf_weights(cut)

    sharded = tmp_path / "sharded"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="40KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    with pytest.raises(FileNotFoundError) as e:
        check_hf_checkpoint(sharded, arch)
    msg = str(e.value)
    assert "\n" not in msg and shards[1].name in msg and "model.safetensors.index.json" in msg, msg


def test_key_value_heads_must_divide_the_heads():
    """Grouped-query attention gives each KV head a whole group of query heads; transformers would fail
    deep inside the first forward, the converter on a reshape."""
    _refused(_cfg("llama2", num_attention_heads=4, num_key_value_heads=3), "num_key_value_heads", "3", "4")


def test_a_folder_with_single_and_sharded_weights_is_read_as_transformers_reads_it(qwen2_dir, tmp_path):
    """transformers loads model.safetensors when a folder has it beside an index and shards (an export
    written into an old checkpoint folder); the converter must read the same tensors."""
    import torch

    from remit.train.convert import read_hf_shapes, read_hf_weights
    from tests.train.tiny_models import load_hf

    both = _edit(qwen2_dir, tmp_path / "both")
    other = load_hf(qwen2_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
    other.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    for f in (tmp_path / "sharded").glob("model*.safetensors*"):
        shutil.copy2(f, both / f.name)
    assert (both / "model.safetensors.index.json").exists() and (both / "model.safetensors").exists()
    expected = load_hf(both).state_dict()
    got = read_hf_weights(both)
    assert set(read_hf_shapes(both)) == set(got)
    for name, t in got.items():
        assert torch.equal(t, expected[name]), name


@pytest.mark.megatron
@pytest.mark.slow
def test_the_cli_refuses_a_vocabulary_tp_does_not_divide_before_reading_data(tmp_path):
    """TP splits the vocabulary over the ranks; an odd vocabulary at TP 2 is refused, in one line per
    rank, before the data is opened (here there is none)."""
    d = make_tiny("qwen2", tmp_path / "odd", vocab_size=321)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "remit.train",
         "--data", str(tmp_path / "no-such-output"), "--init-hf", str(d), "--save", str(tmp_path / "run"),
         "--train-iters", "1", "--global-batch-size", "2", "--tensor-model-parallel-size", "2"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("remit-train: error:")]
    assert errors and all("vocab_size (321)" in e for e in errors), proc.stderr[-3000:]


def test_a_quantized_checkpoint_is_refused_by_name():
    """FP8/GPTQ/AWQ/bitsandbytes checkpoints keep the model_type of their family; their weights are not
    the model's full-precision weights."""
    msg = _refused(_cfg("llama3.1", quantization_config={"quant_method": "fp8", "activation_scheme": "dynamic"}))
    assert "quantization_config" in msg and "fp8" in msg
