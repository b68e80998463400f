"""The architecture of a Hugging Face checkpoint, read from its ``config.json`` and checked before any work.

Supported families (decoder-only, RMSNorm, SwiGLU, RoPE, grouped-query attention):

- ``llama``: Llama 2, 3, 3.1, 3.2 (``rope_type`` default, linear or llama3), tied or untied embeddings;
- ``mistral``: Mistral, with its sliding window where ``sliding_window`` is set;
- ``qwen2``: Qwen2 and Qwen2.5 (biases on q, k and v), sliding-window layers where configured;
- ``qwen3``: Qwen3 (RMSNorm over each head of q and k before RoPE);
- ``smollm3``: SmolLM3 (layers without RoPE, ``no_rope_layers``).

The config is resolved with the transformers config class of its ``model_type``, so defaults (Qwen3's
head_dim of 128, SmolLM3's RoPE base, Qwen2's window layers, ...) mean what they mean to transformers.
Every key that would change the forward pass and that the Megatron model does not reproduce is
refused by name, with the file, the value and what to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

#: model_type -> the transformers class a checkpoint of that type declares in ``architectures``.
SUPPORTED: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
}

_MOE = "mixture-of-experts MLP layers (remit-train builds dense MLPs only)"
_MLA = "multi-head latent attention (MLA) and " + _MOE
#: Families that are refused, with what the Megatron model here lacks for them.
REFUSED: dict[str, str] = {
    "olmo": "OLMo's non-parametric LayerNorm",
    "olmo2": "OLMo 2's norms after attention and MLP (post-norm) and its q/k RMSNorm over all heads",
    "olmo3": "OLMo 3's post-norm layers and q/k RMSNorm over all heads",
    "gemma": "Gemma's (1 + w) RMSNorm, GeGLU activation and embedding scaling",
    "gemma2": "Gemma 2's (1 + w) RMSNorm, sandwich norms, GeGLU and logit soft-capping",
    "gemma3": "Gemma 3's (1 + w) RMSNorm, sandwich norms, q/k norm, local/global RoPE bases and GeGLU",
    "gemma3_text": "Gemma 3's (1 + w) RMSNorm, sandwich norms, q/k norm, local/global RoPE bases and GeGLU",
    "phi": "Phi's LayerNorm with biases, parallel attention/MLP block and partial rotary embedding",
    "phi3": "Phi-3's fused qkv/gate-up projections and long-context RoPE (longrope)",
    "cohere": "Cohere's LayerNorm, parallel block and logit scaling",
    "granite": "Granite's embedding, residual, attention and logit multipliers",
    "starcoder2": "StarCoder2's LayerNorm with biases and GELU MLP",
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
    "qwen3_moe": _MOE,
    "olmoe": _MOE,
    "granitemoe": _MOE,
    "dbrx": _MOE,
    "phimoe": _MOE,
    "jamba": "Mamba layers and " + _MOE,
    "llama4": "Llama 4's chunked attention, q/k L2 norm and " + _MOE,
    "gpt_oss": "attention sinks and " + _MOE,
    "deepseek_v2": _MLA,
    "deepseek_v3": _MLA,
}

#: Keys of other families that change the forward pass. A supported family never sets them, so one
#: found in a config means the config belongs to (or was edited from) a model remit-train does not build.
FOREIGN_KEYS: dict[str, str] = {
    "attn_logit_softcapping": "attention logit soft-capping",
    "final_logit_softcapping": "final logit soft-capping",
    "logit_scale": "logit scaling",
    "logits_scaling": "logit scaling",
    "embedding_multiplier": "embedding scaling",
    "residual_multiplier": "residual scaling",
    "attention_multiplier": "attention score scaling",
    "query_pre_attn_scalar": "a custom attention scale",
    "clip_qkv": "q/k/v clipping",
    "use_qk_norm": "q/k normalisation",
    "qk_layernorm": "q/k normalisation",
    "attention_chunk_size": "chunked attention",
    "num_local_experts": "mixture-of-experts layers",
    "num_experts": "mixture-of-experts layers",
    "n_routed_experts": "mixture-of-experts layers",
    "kv_lora_rank": "multi-head latent attention",
    "q_lora_rank": "multi-head latent attention",
    "use_parallel_residual": "a parallel attention/MLP block",
    "parallel_attn": "a parallel attention/MLP block",
    "rotary_pct": "partial rotary embedding",
    "partial_rotary_factor": "partial rotary embedding",
    "no_rope_layers": "layers without RoPE",
    "no_rope_layer_interval": "layers without RoPE",
    "sandwich_norm": "extra norms around each block",
}

#: Files copied from the HF checkpoint into the run folder, so that export needs no other input.
TEMPLATE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def _harmless(value: Any) -> bool:
    """Whether a foreign key's value leaves the forward pass unchanged: unset, false, empty, or a neutral
    0 / 1 number. A flag set to true is never harmless, although ``True == 1`` in Python."""
    if value is None or value is False or value == []:
        return True
    return not isinstance(value, bool) and isinstance(value, int | float) and value in (0, 1)


#: rope_type -> the keys of its parameters that transformers reads.
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
_ROPE_COMMON = ("rope_type", "type", "rope_theta", "partial_rotary_factor")


class ArchitectureError(ValueError):
    """A checkpoint's config or weights describe a model remit-train does not reproduce exactly."""


@dataclass(frozen=True)
class Architecture:
    """What the Megatron model and the weight conversion need to know about a checkpoint."""

    model_type: str
    """One of `SUPPORTED`."""
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    """Width of the SwiGLU MLP (``intermediate_size``)."""
    num_layers: int
    num_heads: int
    num_kv_heads: int
    """Key/value heads (grouped-query attention); equal to `num_heads` for multi-head attention."""
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    """RoPE base."""
    rope_type: str
    """'default', 'linear' or 'llama3'."""
    rope_params: tuple[tuple[str, float], ...]
    """The scaling parameters of `rope_type` (sorted (key, value) pairs)."""
    qkv_bias: bool
    """Biases on the q, k and v projections (Qwen2); never on the output projection or the MLP."""
    qk_norm: bool
    """RMSNorm over each head of q and k, before RoPE (Qwen3)."""
    rope_layers: tuple[bool, ...]
    """Per layer: whether it applies RoPE (False: a NoPE layer, SmolLM3)."""
    windows: tuple[int | None, ...]
    """Per layer: sliding window in tokens (a query sees itself and window - 1 earlier tokens), or None."""
    tie_embeddings: bool
    """Output layer shares the input embedding (no ``lm_head.weight`` of its own)."""
    max_positions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def uses_rope(self) -> bool:
        return any(self.rope_layers)

    @property
    def has_windows(self) -> bool:
        return any(w is not None for w in self.windows)

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies [head_dim / 2], fp32, computed as transformers computes them."""
        dim = self.head_dim
        inv = 1.0 / (self.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))
        p = dict(self.rope_params)
        if self.rope_type == "linear":
            return inv / p["factor"]
        if self.rope_type == "llama3":
            # Wavelengths shorter than original/high_freq_factor keep their frequency, longer than
            # original/low_freq_factor are divided by `factor`, and the band between is interpolated.
            factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
            old = p["original_max_position_embeddings"]
            wavelen = 2 * torch.pi / inv
            scaled = torch.where(wavelen > old / low, inv / factor, inv)
            smooth = (old / wavelen - low) / (high - low)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < old / high) * ~(wavelen > old / low)
            return torch.where(medium, smoothed, scaled)
        return inv


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing. --init-hf must be a Hugging Face checkpoint folder.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArchitectureError(f"{path}: not valid JSON ({e}); restore the checkpoint's config.json.") from None


def read_architecture(hf_dir: str | Path) -> Architecture:
    """The architecture of the checkpoint folder `hf_dir` (its config.json), or an `ArchitectureError`."""
    return architecture_from_config(read_hf_config(hf_dir), str(Path(hf_dir) / "config.json"))


def _refuse(source: str, key: str, value: Any, why: str, fix: str) -> NoReturn:
    raise ArchitectureError(f"{source}: {key}={json.dumps(value)}: {why}; {fix}.")


def _check_family(raw: dict[str, Any], source: str) -> str:
    model_type = raw.get("model_type")
    archs = raw.get("architectures") or []
    if model_type in REFUSED:
        _refuse(
            source,
            "model_type",
            model_type,
            f"not supported ({', '.join(archs) or model_type}): remit-train lacks {REFUSED[model_type]}",
            f"use a checkpoint of a supported family ({', '.join(SUPPORTED)})",
        )
    if model_type not in SUPPORTED:
        _refuse(
            source,
            "model_type",
            model_type,
            f"not a supported architecture ({', '.join(archs) or 'no architectures listed'})",
            f"remit-train converts {', '.join(SUPPORTED)} checkpoints exactly; others are refused rather than "
            "loaded approximately",
        )
    expected = SUPPORTED[model_type]
    if archs and archs != [expected]:
        _refuse(
            source,
            "architectures",
            archs,
            f"does not match model_type {model_type!r} (which is {expected})",
            "restore the checkpoint's original config.json; relabelling a model does not convert its weights",
        )
    return model_type


def _check_foreign_keys(raw: dict[str, Any], model_type: str, source: str) -> None:
    allowed = {"smollm3": {"no_rope_layers", "no_rope_layer_interval"}}.get(model_type, set())
    for key, what in FOREIGN_KEYS.items():
        if key in allowed or key not in raw or _harmless(raw[key]):
            continue
        _refuse(
            source,
            key,
            raw[key],
            f"{what} is not part of a {model_type} model and is not built by remit-train",
            "use the checkpoint's original config.json, or a checkpoint of a supported family",
        )


def _resolve(raw: dict[str, Any], model_type: str, source: str):
    """The transformers config object for `raw`: defaults and derived fields as transformers has them."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    tf_logger = logging.getLogger("transformers")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)  # its own consistency warnings are not ours to print
    try:
        return CONFIG_MAPPING[model_type].from_dict({k: v for k, v in raw.items() if k != "model_type"})
    except Exception as e:  # transformers validates with several exception types
        why = " ".join(str(e).split())  # its messages span lines; a refusal is one
        raise ArchitectureError(
            f"{source}: transformers cannot read this {model_type} config ({type(e).__name__}: {why}); "
            "restore the checkpoint's original config.json."
        ) from None
    finally:
        tf_logger.setLevel(level)


def _check_rope_type(key: str, params: dict[str, Any], source: str) -> str:
    """The RoPE type `params` names; an unknown one is refused by name."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        _refuse(
            source,
            f"{key}.rope_type",
            rope_type,
            "this RoPE scaling is not reproduced",
            f"supported rope types: {', '.join(ROPE_TYPES)}",
        )
    return str(rope_type)


def _check_raw_rope_type(raw: dict[str, Any], source: str) -> None:
    """Refuse an unknown RoPE type by name before transformers gets to validate (and word) it."""
    for key in ("rope_parameters", "rope_scaling"):
        params = raw.get(key)
        if isinstance(params, dict) and not all(isinstance(v, dict) for v in params.values()):
            _check_rope_type(key, params, source)


def _rope(raw: dict[str, Any], cfg: Any, source: str) -> tuple[float, str, tuple[tuple[str, float], ...]]:
    key = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if params and all(isinstance(v, dict) for v in params.values()):
        _refuse(source, key, raw.get(key), "per-layer-type RoPE parameters", "use a single RoPE setting")
    rope_type = _check_rope_type(key, params, source)
    partial = params.get("partial_rotary_factor", 1.0)
    if partial not in (None, 1, 1.0):
        _refuse(source, f"{key}.partial_rotary_factor", partial, "partial rotary embedding is not built", "use 1.0")
    unknown = sorted(set(params) - set(ROPE_TYPES[rope_type]) - set(_ROPE_COMMON))
    if unknown:
        _refuse(
            source,
            f"{key}.{unknown[0]}",
            params[unknown[0]],
            f"not a parameter of rope_type {rope_type!r}, so its meaning here is unknown",
            "remove it, or use the checkpoint's original config.json",
        )
    values = []
    for name in ROPE_TYPES[rope_type]:
        value = params.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            _refuse(source, f"{key}.{name}", value, f"rope_type {rope_type!r} needs a positive number", "set it")
        values.append((name, float(value)))
    if rope_type == "llama3" and dict(values)["high_freq_factor"] <= dict(values)["low_freq_factor"]:
        _refuse(
            source, f"{key}.high_freq_factor", dict(values)["high_freq_factor"], "must exceed low_freq_factor", "fix it"
        )
    theta = params.get("rope_theta")
    if not isinstance(theta, int | float) or theta <= 0:
        _refuse(source, "rope_theta", theta, "the RoPE base must be a positive number", "set rope_theta")
    return float(theta), rope_type, tuple(sorted(values))


def _windows(raw: dict[str, Any], cfg: Any, model_type: str, n_layers: int, source: str) -> tuple[int | None, ...]:
    window = getattr(cfg, "sliding_window", None)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        _refuse(
            source,
            "sliding_window",
            window,
            "a window must be a positive number of tokens",
            "set the model's window, or null for full attention",
        )
    if model_type == "llama":
        if raw.get("sliding_window") is not None:
            _refuse(
                source,
                "sliding_window",
                raw["sliding_window"],
                "transformers' Llama ignores it, so it is unclear which attention the model was trained with",
                "remove the key for full attention, or use model_type 'mistral' for a windowed model",
            )
        return (None,) * n_layers
    if model_type == "mistral":
        if "sliding_window" not in raw:
            # transformers' MistralConfig defaults to a 4096-token window: a Llama relabelled as Mistral
            # would gain one without a word. Mistral's own configs always state it.
            raise ArchitectureError(
                f"{source}: sliding_window is missing, so transformers' Mistral attends within a 4096-token "
                "window; state it: the model's window in tokens, or null for full attention."
            )
        if raw.get("layer_types") is not None:
            _refuse(
                source,
                "layer_types",
                raw["layer_types"],
                "alternating attention layers are not part of transformers' Mistral",
                "remove the key (every layer then uses sliding_window)",
            )
        return (int(window) if window else None,) * n_layers
    if model_type == "smollm3" and window is not None and not getattr(cfg, "use_sliding_window", False):
        # transformers' SmolLM3 ignores the window then (a windowed Mistral relabelled as SmolLM3 would
        # lose it); SmolLM3's own configs have sliding_window null.
        _refuse(
            source,
            "sliding_window",
            window,
            "transformers' SmolLM3 ignores it without use_sliding_window, so it is unclear which attention the "
            "model was trained with",
            "set it to null for full attention, or use_sliding_window true with sliding layers in layer_types",
        )
    types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * n_layers)
    if len(types) != n_layers:
        _refuse(source, "layer_types", types, f"has {len(types)} entries for {n_layers} layers", "give one per layer")
    out: list[int | None] = []
    for i, t in enumerate(types):
        if t == "full_attention":
            out.append(None)
        elif t == "sliding_attention":
            if not window:
                _refuse(source, f"layer_types[{i}]", t, "a sliding layer needs sliding_window", "set sliding_window")
            if model_type == "smollm3" and not getattr(cfg, "use_sliding_window", False):
                _refuse(
                    source,
                    "use_sliding_window",
                    False,
                    f"layer {i} is 'sliding_attention', which transformers' SmolLM3 masks but does not window "
                    "in every attention implementation",
                    "set use_sliding_window true, or make the layer full_attention",
                )
            out.append(int(window))
        else:
            _refuse(source, f"layer_types[{i}]", t, "only full_attention and sliding_attention layers are built", "")
    return tuple(out)


def architecture_from_config(raw: dict[str, Any], source: str = "config.json") -> Architecture:
    """Check an HF config dict (the contents of config.json) and return its `Architecture`."""
    model_type = _check_family(raw, source)
    quant = raw.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
        _refuse(
            source,
            "quantization_config.quant_method",
            method,
            "a quantized checkpoint's weights are not the model's full-precision weights, which training updates",
            "start from the unquantized checkpoint of the same model",
        )
    _check_foreign_keys(raw, model_type, source)
    _check_raw_rope_type(raw, source)
    cfg = _resolve(raw, model_type, source)

    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        _refuse(source, "hidden_act", act, "only SwiGLU (silu) MLPs are built", "use a silu checkpoint")
    if model_type != "qwen2" and getattr(cfg, "attention_bias", False):
        _refuse(
            source,
            "attention_bias",
            True,
            "biases on all four attention projections (the output one included) are not built",
            "only Qwen2's q/k/v biases are supported",
        )
    if getattr(cfg, "mlp_bias", False):
        _refuse(source, "mlp_bias", True, "MLP biases are not built", "use a checkpoint without MLP biases")
    dropout = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
    if dropout:
        _refuse(source, "attention_dropout", dropout, "remit-train trains without dropout", "set it to 0.0")

    n_layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    hidden = int(cfg.hidden_size)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    if kv_heads <= 0 or heads % kv_heads:
        _refuse(
            source,
            "num_key_value_heads",
            kv_heads,
            f"must divide num_attention_heads ({heads}): each KV head serves a whole group of query heads",
            "restore the checkpoint's original config.json",
        )
    theta, rope_type, rope_params = _rope(raw, cfg, source)
    if model_type == "smollm3":
        flags = list(cfg.no_rope_layers)
        if len(flags) != n_layers or any(f not in (0, 1, True, False) for f in flags):
            _refuse(source, "no_rope_layers", flags, f"needs {n_layers} entries of 0 or 1", "fix the list")
        rope_layers = tuple(bool(f) for f in flags)  # 1 = the layer applies RoPE
    else:
        rope_layers = (True,) * n_layers
    if head_dim % 2:
        _refuse(source, "head_dim", head_dim, "RoPE needs an even head dimension", "check the config")
    return Architecture(
        model_type=model_type,
        vocab_size=int(cfg.vocab_size),
        hidden_size=hidden,
        ffn_hidden_size=int(cfg.intermediate_size),
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(cfg.rms_norm_eps),
        rope_theta=theta,
        rope_type=rope_type,
        rope_params=rope_params,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        rope_layers=rope_layers,
        windows=_windows(raw, cfg, model_type, n_layers, source),
        tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        max_positions=int(getattr(cfg, "max_position_embeddings", 4096) or 4096),
    )


def check_parallel(arch: Architecture, tp: int) -> None:
    """Tensor parallelism splits heads, KV groups, the FFN and the vocabulary; each must divide."""
    for name, value in (
        ("num_attention_heads", arch.num_heads),
        ("num_key_value_heads", arch.num_kv_heads),
        ("intermediate_size", arch.ffn_hidden_size),
        ("vocab_size", arch.vocab_size),
    ):
        if value % tp:
            raise ValueError(
                f"tensor_model_parallel_size {tp} does not divide the model's {name} ({value}); choose a TP size "
                f"that divides it{' (or pad the vocabulary of the checkpoint)' if name == 'vocab_size' else ''}."
            )
