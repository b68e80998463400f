"""The Megatron-Core model for a Hugging Face Llama checkpoint: its shape, its config, the GPTModel.

The architecture is read from the checkpoint's ``config.json`` (RMSNorm, SwiGLU, RoPE, grouped-query
attention, no biases, tied or untied embeddings as the checkpoint says), so the model mid-training
starts from is the model that was scored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

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


@dataclass(frozen=True)
class LlamaShape:
    """What the Megatron model needs to know about a Llama checkpoint."""

    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_embeddings: bool
    max_positions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing. --init-hf must be a Hugging Face checkpoint folder.")
    return json.loads(path.read_text())


def llama_shape(cfg: dict[str, Any], source: str = "config.json") -> LlamaShape:
    """Check that `cfg` (an HF config dict) is a plain Llama and return its shape."""
    if cfg.get("model_type") != "llama":
        raise ValueError(
            f"{source}: model_type {cfg.get('model_type')!r}; remit-train converts Llama checkpoints "
            "(model_type 'llama'). Convert the model to the Llama layout first."
        )
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ValueError(f"{source}: {key}=true is not supported (Llama has no biases).")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {cfg['hidden_act']!r}; only SwiGLU ('silu') is supported.")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise ValueError(
            f"{source}: rope type {rope_type!r} is not supported; only plain RoPE ('default') converts exactly."
        )
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    heads = int(cfg["num_attention_heads"])
    return LlamaShape(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_positions=int(cfg.get("max_position_embeddings", 4096)),
    )


def check_parallel(shape: LlamaShape, tp: int) -> None:
    """Tensor parallelism splits heads, KV groups, the FFN and the vocabulary; each must divide."""
    for name, value in (
        ("num_attention_heads", shape.num_heads),
        ("num_key_value_heads", shape.num_kv_heads),
        ("intermediate_size", shape.ffn_hidden_size),
        ("vocab_size", shape.vocab_size),
    ):
        if value % tp:
            raise ValueError(
                f"tensor_model_parallel_size {tp} does not divide the model's {name} ({value}); choose a TP size "
                f"that divides it{' (or pad the vocabulary of the checkpoint)' if name == 'vocab_size' else ''}."
            )


def transformer_config(
    shape: LlamaShape,
    *,
    tp: int = 1,
    bf16: bool = False,
    pp: int = 1,
    sequence_parallel: bool = False,
    recompute_granularity: str | None = None,
    recompute_method: str | None = None,
    recompute_num_layers: int | None = None,
):
    """The mcore TransformerConfig of a Llama. Fusions that need Apex or Transformer Engine are off,
    so the same config runs on the CPU and on GPUs. The keyword arguments after `bf16` are the
    parallelism and activation-recompute settings (see `remit.train.parallel`)."""
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    from remit.train.parallel import check_layout

    check_parallel(shape, tp)
    check_layout(shape.num_layers, pp, recompute_method, recompute_num_layers)
    params_dtype = torch.bfloat16 if bf16 else torch.float32
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_heads,
        num_query_groups=shape.num_kv_heads,
        kv_channels=shape.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=shape.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=params_dtype if pp > 1 else None,  # the dtype of the activations sent between stages
        sequence_parallel=sequence_parallel,
        recompute_granularity=recompute_granularity,
        recompute_method=recompute_method,
        recompute_num_layers=recompute_num_layers,
        use_cpu_initialization=True,  # TP-consistent initialisation; the weights come from the checkpoint anyway
        params_dtype=params_dtype,
        bf16=bf16,
        attention_backend=AttnBackend.local,  # the only backend that takes an arbitrary (document) mask everywhere
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        # The loss function returns (sum of w*l, valid-token count): Megatron divides once, globally.
        calculate_per_token_loss=True,
    )


def build_gpt_model(
    shape: LlamaShape, config, max_sequence_length: int, *, pre_process: bool = True, post_process: bool = True
):
    """A GPTModel with mcore's local layer spec (RMSNorm, SwiGLU, RoPE).

    Under pipeline parallelism each stage builds its own part: `pre_process` (the first stage) holds
    the embedding, `post_process` (the last stage) the final norm and the output layer, and mcore gives
    each stage its share of the decoder layers."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from remit.train.parallel import sequence_parallel_spec

    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    if config.sequence_parallel:
        spec = sequence_parallel_spec(config, spec)
    theta = shape.rope_theta
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        pre_process=pre_process,
        post_process=post_process,
        vocab_size=shape.vocab_size,
        max_sequence_length=max_sequence_length,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(theta) if float(theta).is_integer() else theta,
    )
