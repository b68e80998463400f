"""Hugging Face Llama <-> Megatron-Core GPTModel weights, both directions, at any tensor-parallel size.

Layouts (mcore local spec, TP=1 names):
  embed_tokens -> embedding.word_embeddings; norm -> decoder.final_layernorm; lm_head -> output_layer
  per layer: input_layernorm -> input_layernorm, post_attention_layernorm -> pre_mlp_layernorm,
  o_proj -> self_attention.linear_proj, down_proj -> mlp.linear_fc2,
  [gate; up] -> mlp.linear_fc1 (stacked on the output dimension),
  q/k/v -> self_attention.linear_qkv, interleaved per KV group: [q heads of group g; k_g; v_g] for each g.

Tensor parallelism splits the output dimension of column-parallel weights (qkv, fc1, embeddings and
output layer) and the input dimension of row-parallel ones (proj, fc2). The fused fc1 is split per
half, so rank r holds [gate_r; up_r]. The per-group qkv layout keeps whole groups on one rank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from remit.train.model import TEMPLATE_FILES, LlamaShape, llama_shape

_COLUMN = ("embedding.word_embeddings.weight", "output_layer.weight", "linear_qkv.weight", "linear_fc1.weight")
_ROW = ("linear_proj.weight", "linear_fc2.weight")


def _layer_pairs(i: int) -> list[tuple[str, str]]:
    hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
    return [
        (hf + "input_layernorm.weight", mc + "input_layernorm.weight"),
        (hf + "post_attention_layernorm.weight", mc + "pre_mlp_layernorm.weight"),
        (hf + "self_attn.o_proj.weight", mc + "self_attention.linear_proj.weight"),
        (hf + "mlp.down_proj.weight", mc + "mlp.linear_fc2.weight"),
    ]


def hf_to_mcore(hf: dict[str, torch.Tensor], shape: LlamaShape) -> dict[str, torch.Tensor]:
    """Full (TP=1) mcore tensors from an HF Llama state dict."""
    out = {
        "embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": hf["model.norm.weight"],
    }
    if not shape.tie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    nh, nkv, hd, h = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size
    for i in range(shape.num_layers):
        for hf_name, mc_name in _layer_pairs(i):
            out[mc_name] = hf[hf_name]
        p = f"model.layers.{i}."
        q = hf[p + "self_attn.q_proj.weight"].reshape(nkv, nh // nkv, hd, h)
        k = hf[p + "self_attn.k_proj.weight"].reshape(nkv, 1, hd, h)
        v = hf[p + "self_attn.v_proj.weight"].reshape(nkv, 1, hd, h)
        out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, h)
        out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
            [hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]], 0
        )
    return out


def mcore_to_hf(mc: dict[str, torch.Tensor], shape: LlamaShape) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_mcore`."""
    out = {
        "model.embed_tokens.weight": mc["embedding.word_embeddings.weight"],
        "model.norm.weight": mc["decoder.final_layernorm.weight"],
    }
    if not shape.tie_embeddings:
        out["lm_head.weight"] = mc["output_layer.weight"]
    nh, nkv, hd, h = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.hidden_size
    per_group = nh // nkv
    for i in range(shape.num_layers):
        for hf_name, mc_name in _layer_pairs(i):
            out[hf_name] = mc[mc_name]
        p = f"model.layers.{i}."
        qkv = mc[f"decoder.layers.{i}.self_attention.linear_qkv.weight"].reshape(nkv, per_group + 2, hd, h)
        out[p + "self_attn.q_proj.weight"] = qkv[:, :per_group].reshape(nh * hd, h)
        out[p + "self_attn.k_proj.weight"] = qkv[:, per_group].reshape(nkv * hd, h)
        out[p + "self_attn.v_proj.weight"] = qkv[:, per_group + 1].reshape(nkv * hd, h)
        gate, up = mc[f"decoder.layers.{i}.mlp.linear_fc1.weight"].chunk(2, 0)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
    return {k: v.contiguous() for k, v in out.items()}


def _split_dim(name: str) -> int | None:
    if name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def tp_slice(name: str, full: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Rank `rank`'s part of a full tensor under tensor parallelism of `size`."""
    dim = _split_dim(name)
    if dim is None or size == 1:
        return full
    if name.endswith("linear_fc1.weight"):
        gate, up = full.chunk(2, 0)
        return torch.cat([gate.chunk(size, 0)[rank], up.chunk(size, 0)[rank]], 0)
    return full.chunk(size, dim)[rank]


def tp_gather(name: str, local: torch.Tensor, group) -> torch.Tensor:
    """The full tensor from every tensor-parallel rank's part (a collective: call on all TP ranks)."""
    size = torch.distributed.get_world_size(group) if group is not None else 1
    dim = _split_dim(name)
    if dim is None or size == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    if name.endswith("linear_fc1.weight"):
        halves = [p.chunk(2, 0) for p in parts]
        return torch.cat([torch.cat([g for g, _ in halves], 0), torch.cat([u for _, u in halves], 0)], 0)
    return torch.cat(parts, dim)


def read_hf_weights(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint (single or sharded safetensors), on the CPU."""
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (hf_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{hf_dir}: no model.safetensors(.index.json); save the model with safetensors.")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        out.update(load_file(str(hf_dir / name)))
    return out


def load_hf_into(model: torch.nn.Module, hf_dir: str | Path, shape: LlamaShape, tp_rank: int, tp_size: int) -> None:
    """Copy an HF checkpoint's weights into this rank's part of a GPTModel."""
    load_hf_state_into(model, read_hf_weights(hf_dir), shape, tp_rank, tp_size, source=str(hf_dir))


def load_hf_state_into(
    model: torch.nn.Module,
    hf_state: dict[str, torch.Tensor],
    shape: LlamaShape,
    tp_rank: int,
    tp_size: int,
    source: str = "state dict",
) -> None:
    """Copy an HF Llama state dict (full, TP=1) into this rank's part of a GPTModel."""
    hf_dir = source
    full = hf_to_mcore(hf_state, shape)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(full))
    unexpected = sorted(set(full) - set(params))
    if missing or unexpected:
        raise ValueError(f"{hf_dir}: weights do not fit the model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    with torch.no_grad():
        for name, param in params.items():
            part = tp_slice(name, full[name], tp_rank, tp_size)
            if part.shape != param.shape:
                raise ValueError(
                    f"{hf_dir}: {name} has shape {tuple(part.shape)} for this rank, the model "
                    f"expects {tuple(param.shape)}"
                )
            param.copy_(part.to(param.dtype))


def gather_full_state(model: torch.nn.Module, tp_group) -> dict[str, torch.Tensor]:
    """Full (TP=1) mcore tensors of a possibly tensor-parallel GPTModel (collective over `tp_group`)."""
    return {name: tp_gather(name, p.detach(), tp_group).cpu() for name, p in model.named_parameters()}


def save_hf(full_mcore: dict[str, torch.Tensor], template_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an HF checkpoint: the template's config and tokenizer files plus the converted weights."""
    from safetensors.torch import save_file

    template_dir, out_dir = Path(template_dir), Path(out_dir)
    cfg = json.loads((template_dir / "config.json").read_text())
    shape = llama_shape(cfg, str(template_dir / "config.json"))
    dtype = getattr(torch, str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"))
    tensors = {k: v.to(dtype).contiguous() for k, v in mcore_to_hf(full_mcore, shape).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        if (template_dir / name).exists():
            shutil.copy2(template_dir / name, out_dir / name)
    tmp = out_dir / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_dir / "model.safetensors")
    return out_dir
