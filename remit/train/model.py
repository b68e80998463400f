"""The Megatron-Core GPTModel of a Hugging Face checkpoint's `Architecture`.

- RMSNorm, SwiGLU, grouped-query attention, tied or untied embeddings, as the checkpoint says;
- q/k/v biases (Qwen2), per-head q/k RMSNorm before RoPE (Qwen3), layers without RoPE (SmolLM3, through
  mcore's ``no_rope_freq``), per-layer sliding windows (Mistral, Qwen2/3), all through the attention module;
- RoPE inverse frequencies computed as transformers computes them (mcore's own llama3 scaling hard-codes
  its parameters, so it is never used) and applied at the *position ids* of the batch, which restart at 0
  at every document: each document is encoded exactly as when it was scored alone;
- document-masked attention from `remit.train.attention` (``--attention``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch

from remit.train.architecture import Architecture, check_parallel


def transformer_config(
    arch: Architecture,
    *,
    tp: int = 1,
    bf16: bool = False,
    attention: str = "sdpa",
    pp: int = 1,
    sequence_parallel: bool = False,
    recompute_granularity: str | None = None,
    recompute_method: str | None = None,
    recompute_num_layers: int | None = None,
    **overrides,
):
    """The mcore TransformerConfig of `arch`. Fusions that need Apex or Transformer Engine are off, so the
    same config runs on the CPU and on GPUs. The keyword arguments after `attention` are the parallelism
    and activation-recompute settings (see `remit.train.parallel`); `overrides`: any further
    TransformerConfig field."""
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnBackend
    from megatron.core.transformer.transformer_config import TransformerConfig

    from remit.train.attention import rope_fusion_available
    from remit.train.parallel import check_layout

    check_parallel(arch, tp)
    check_layout(arch.num_layers, pp, recompute_method, recompute_num_layers)
    params_dtype = torch.bfloat16 if bf16 else torch.float32
    fields: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        # mcore skips RoPE in a layer whose entry is 1.
        no_rope_freq=[0 if r else 1 for r in arch.rope_layers] if not all(arch.rope_layers) else None,
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
        attention_backend=AttnBackend.auto if attention == "te" else AttnBackend.local,
        gradient_accumulation_fusion=False,
        # TE's fused RoPE restarts positions at every document of a packed row; the local path has its own.
        apply_rope_fusion=attention == "te" and rope_fusion_available(),
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        # The loss function returns (sum of w*l, valid-token count): Megatron divides once, globally.
        calculate_per_token_loss=True,
    )
    if attention == "te" and arch.has_windows:
        # TE windows are (left, right) token counts besides the query; the local backends never set
        # window_size, because mcore's local softmax would replace the document mask by a window mask.
        sizes = {w for w in arch.windows if w is not None}
        if len(sizes) > 1:
            raise ValueError(f"attention te: layers with different sliding windows {sorted(sizes)}; use sdpa")
        fields["window_size"] = (sizes.pop() - 1, 0)
        fields["window_attn_skip_freq"] = [1 if w is not None else 0 for w in arch.windows]
    fields.update(overrides)
    return TransformerConfig(**fields)


def layer_spec(arch: Architecture, attention: str):
    """mcore's layer spec for `arch` with the document attention of backend `attention`."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    from remit.train.attention import SDPADocumentAttention, dense_attention_class

    if attention == "te":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
    spec = get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm")
    module = {"sdpa": SDPADocumentAttention, "dense": dense_attention_class()}[attention]
    spec.submodules.self_attention.submodules.core_attention = partial(module, windows=arch.windows)
    return spec


def _document_rope_class():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    class DocumentRotaryEmbedding(RotaryEmbedding):
        """RoPE at the batch's position ids ([s, b, 1, d] angles) instead of at the row offsets.

        `positions` is set by `RemitGPTModel.forward` for the length of one forward pass. In the packed
        (THD) format mcore's own path runs, which restarts at every ``cu_seqlens`` boundary.
        """

        positions: torch.Tensor | None = None

        def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None):
            if self.positions is None or packed_seq:
                return super().forward(max_seq_len, offset, packed_seq, cp_group)
            inv = self.inv_freq.to(self.positions.device)
            freqs = self.positions.t().to(inv.dtype)[..., None] * inv  # [s, b, d/2]
            return torch.cat((freqs, freqs), dim=-1)[:, :, None, :]

    return DocumentRotaryEmbedding


def _remit_gpt_class():
    from megatron.core.models.gpt import GPTModel

    class RemitGPTModel(GPTModel):
        """GPTModel whose RoPE follows the position ids passed to forward."""

        def forward(self, input_ids, position_ids, attention_mask, *args, **kwargs):
            rope = getattr(self, "rotary_pos_emb", None)
            if rope is not None and hasattr(rope, "positions"):
                rope.positions = position_ids
            try:
                return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
            finally:
                if rope is not None and hasattr(rope, "positions"):
                    rope.positions = None

    return RemitGPTModel


_TE_ENV = ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN")


@contextlib.contextmanager
def _te_env_untouched() -> Iterator[None]:
    """mcore's LanguageModule writes its attention backend into TE's process-wide NVTE_* variables and
    asserts that they agree with any earlier model's. A local-spec model never runs TE, so it neither
    reads nor leaves them: a TE model can still be built in the same process (tests, export)."""
    saved = {k: os.environ.pop(k) for k in _TE_ENV if k in os.environ}
    try:
        yield
    finally:
        for k in _TE_ENV:
            os.environ.pop(k, None)
        os.environ.update(saved)


def _mark_tensor_parallel(model: torch.nn.Module, config) -> None:
    """Mark the tensor-parallel weights as Megatron's initialisation does (``tensor_model_parallel``,
    ``partition_dim``, ``partition_stride``). mcore 0.16.1 sets these attributes only inside its weight
    initialisation, and without them the gradient norm counts a split weight as a copy held by every
    TP rank (only rank 0's part)."""
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
        set_tensor_model_parallel_attributes,
    )

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or hasattr(weight, "tensor_model_parallel"):
            continue
        if isinstance(module, VocabParallelEmbedding):
            dim, stride = 0, 1
        elif isinstance(module, ColumnParallelLinear):
            # mcore's MLP builds a gated fc1 with stride 2 (each rank holds [gate_r; up_r]).
            gated = name.endswith("mlp.linear_fc1") and config.gated_linear_unit and not config.use_kitchen
            dim, stride = 0, 2 if gated else 1
        elif isinstance(module, RowParallelLinear):
            dim, stride = 1, 1
        else:
            continue
        set_tensor_model_parallel_attributes(weight, True, dim, stride)


def build_gpt_model(
    arch: Architecture,
    config,
    max_sequence_length: int,
    attention: str = "sdpa",
    *,
    pre_process: bool = True,
    post_process: bool = True,
):
    """A GPTModel for `arch`, randomly initialised by Megatron, or only allocated where `config` has
    ``perform_initialization=False`` (`remit.train.convert.load_hf_into` then fills every weight).

    Under pipeline parallelism each stage builds its own part: `pre_process` (the first stage) holds
    the embedding, `post_process` (the last stage) the final norm and the output layer, and mcore gives
    each stage its share of the decoder layers."""
    from remit.train.parallel import sequence_parallel_spec

    spec = layer_spec(arch, attention)
    if config.sequence_parallel and attention != "te":
        spec = sequence_parallel_spec(config, spec)
    with contextlib.nullcontext() if attention == "te" else _te_env_untouched():
        model = _remit_gpt_class()(
            config=config,
            transformer_layer_spec=spec,
            pre_process=pre_process,
            post_process=post_process,
            vocab_size=arch.vocab_size,
            max_sequence_length=max_sequence_length,
            share_embeddings_and_output_weights=arch.tie_embeddings,
            position_embedding_type="rope" if arch.uses_rope else "none",
            rotary_percent=1.0,
        )
    if not config.perform_initialization:
        _mark_tensor_parallel(model, config)
    if arch.uses_rope:
        rope = _document_rope_class()(kv_channels=arch.head_dim, rotary_percent=1.0, use_cpu_initialization=True)
        rope.inv_freq = arch.inv_freq()
        model.rotary_pos_emb = rope
    return model


def forward_tokens(model, batch: dict[str, torch.Tensor], attention: str) -> torch.Tensor:
    """Per-token loss [b, S] of a micro-batch (tokens, labels, position_ids, segment_ids) under `attention`
    (logits [b, S, V / TP] when the batch has no labels).

    The local backends take the segment ids in place of the mask. TE takes the micro-batch as one packed
    row of b*S tokens with ``cu_seqlens`` at the document starts.
    """
    tokens, labels = batch["tokens"], batch.get("labels")
    if attention == "te":
        from remit.train.attention import packed_seq_params

        b, s = tokens.shape
        out = model(
            tokens.reshape(1, b * s),
            batch["position_ids"].reshape(1, b * s),
            None,
            labels=None if labels is None else labels.reshape(1, b * s),
            packed_seq_params=packed_seq_params(batch["segment_ids"]),
        )
        return out.reshape(b, s, *out.shape[2:])
    return model(tokens, batch["position_ids"], batch["segment_ids"], labels=labels)
