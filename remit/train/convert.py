"""Hugging Face <-> Megatron-Core GPTModel weights, both directions, at any tensor-parallel size; strict.

Layouts (mcore local spec, TP=1 names):
  embed_tokens -> embedding.word_embeddings; norm -> decoder.final_layernorm; lm_head -> output_layer
  per layer: input_layernorm -> input_layernorm, post_attention_layernorm -> pre_mlp_layernorm,
  o_proj -> self_attention.linear_proj, down_proj -> mlp.linear_fc2,
  [gate; up] -> mlp.linear_fc1 (stacked on the output dimension),
  q/k/v (weights, and biases where the model has them) -> self_attention.linear_qkv, interleaved per KV
  group: [q heads of group g; k_g; v_g] for each g,
  q_norm / k_norm (Qwen3) -> self_attention.q_layernorm / k_layernorm.
The Transformer Engine spec fuses the two block norms into the following linear layers
(``linear_qkv.layer_norm_weight``, ``linear_fc1.layer_norm_weight``); `to_model_names` renames.

Strictness: `check_hf_checkpoint` reads only the safetensors headers and refuses, before any work, a
checkpoint with a tensor the architecture does not use (a Qwen2 relabelled as Llama has q/k/v biases
left over), a missing tensor or a wrong shape. `load_hf_into` then fills every Megatron parameter.

Loading reads slices, never the whole checkpoint (`HFTensors`, safetensors ``get_slice``): each rank
reads the rows or columns of its own parameters, its stage's layers only. For qkv that is the q, k
and v rows of its KV groups; for fc1 its rows of gate and of up. `hf_to_mcore` + `tp_slice` is the
full-tensor reference the sliced reads are tested against.

Tensor parallelism splits the output dimension of column-parallel tensors (qkv weight and bias, fc1,
embeddings, output layer) and the input dimension of row-parallel ones (proj, fc2). The fused fc1 is
split per half, so rank r holds [gate_r; up_r]. The per-group qkv layout keeps whole groups on one rank.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from remit.common.atomic import atomic_path
from remit.train.architecture import TEMPLATE_FILES, Architecture, ArchitectureError, architecture_from_config

_COLUMN = (
    "embedding.word_embeddings.weight",
    "output_layer.weight",
    "linear_qkv.weight",
    "linear_qkv.bias",
    "linear_fc1.weight",
)
_ROW = ("linear_proj.weight", "linear_fc2.weight")
_LAYER_PARAM = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
#: local-spec name -> Transformer Engine spec name (norms fused into the next linear layer).
_TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


def _layer_pairs(i: int, arch: Architecture) -> list[tuple[str, str]]:
    hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
    pairs = [
        (hf + "input_layernorm.weight", mc + "input_layernorm.weight"),
        (hf + "post_attention_layernorm.weight", mc + "pre_mlp_layernorm.weight"),
        (hf + "self_attn.o_proj.weight", mc + "self_attention.linear_proj.weight"),
        (hf + "mlp.down_proj.weight", mc + "mlp.linear_fc2.weight"),
    ]
    if arch.qk_norm:
        pairs += [
            (hf + "self_attn.q_norm.weight", mc + "self_attention.q_layernorm.weight"),
            (hf + "self_attn.k_norm.weight", mc + "self_attention.k_layernorm.weight"),
        ]
    return pairs


def expected_hf_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF checkpoint of `arch` holds, with its shape (``lm_head`` only when untied)."""
    h, nh, nkv, hd, f, v = (
        arch.hidden_size,
        arch.num_heads,
        arch.num_kv_heads,
        arch.head_dim,
        arch.ffn_hidden_size,
        arch.vocab_size,
    )
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not arch.tie_embeddings:
        out["lm_head.weight"] = (v, h)
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (nh * hd, h),
                p + "self_attn.k_proj.weight": (nkv * hd, h),
                p + "self_attn.v_proj.weight": (nkv * hd, h),
                p + "self_attn.o_proj.weight": (h, nh * hd),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
            }
        )
        if arch.qkv_bias:
            out.update(
                {
                    p + "self_attn.q_proj.bias": (nh * hd,),
                    p + "self_attn.k_proj.bias": (nkv * hd,),
                    p + "self_attn.v_proj.bias": (nkv * hd,),
                }
            )
        if arch.qk_norm:
            out.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
    return out


def _is_rope_buffer(name: str) -> bool:
    # Older checkpoints saved the RoPE inverse frequencies of each layer; they are derived, not learned.
    return name.startswith("model.layers.") and name.endswith("self_attn.rotary_emb.inv_freq")


def _same_rope(saved: torch.Tensor, arch: Architecture) -> bool:
    """Whether a saved ``inv_freq`` buffer holds the RoPE frequencies of `arch`, at its own precision.

    Older transformers computed it from a float arange and saved it in the checkpoint's dtype (float16
    for Llama-2-7b-hf): it agrees with ours to a rounding of that dtype, where the smallest frequencies
    may be subnormal. For linear scaling they saved the unscaled frequencies and divided the positions
    instead, which is the same RoPE.
    """
    dtype = saved.dtype if saved.dtype.is_floating_point else torch.float32
    info = torch.finfo(dtype)
    rtol = max(1e-5, 2 * info.eps)
    atol = 2 * info.eps * info.smallest_normal  # two steps among the subnormals
    candidates = [arch.inv_freq()]
    if arch.rope_type == "linear":
        candidates.append(candidates[0] * dict(arch.rope_params)["factor"])
    got = saved.detach().float().cpu()
    return any(
        got.shape == ref.shape and torch.allclose(got, ref.to(dtype).float(), rtol=rtol, atol=atol)
        for ref in candidates
    )


def check_tensors(shapes: dict[str, tuple[int, ...]], arch: Architecture, source: str) -> None:
    """Refuse unless `shapes` (HF tensor name -> shape) is exactly the tensor set of `arch`."""
    expected = expected_hf_shapes(arch)
    extra = sorted(n for n in shapes if n not in expected and not _is_rope_buffer(n))
    if arch.tie_embeddings and "lm_head.weight" in extra:
        extra.remove("lm_head.weight")  # allowed when it equals the embedding; `hf_to_mcore` checks
    if extra:
        hint = ""
        if any(n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for n in extra):
            hint = " (q/k/v biases: a Qwen2 checkpoint has them; keep its model_type 'qwen2')"
        elif any(n.endswith(("q_norm.weight", "k_norm.weight")) for n in extra):
            hint = " (q/k norms: a Qwen3 checkpoint has them; keep its model_type 'qwen3')"
        raise ArchitectureError(
            f"{source}: {len(extra)} tensor(s) that a {arch.model_type} model does not use, e.g. "
            f"{', '.join(extra[:3])}{hint}; the weights are not the model config.json describes: use the "
            "checkpoint's original config.json"
        )
    missing = sorted(n for n in expected if n not in shapes)
    if missing:
        tied = " (config.json says tie_word_embeddings=false)" if "lm_head.weight" in missing else ""
        raise ArchitectureError(
            f"{source}: {len(missing)} tensor(s) of a {arch.model_type} model are missing, e.g. "
            f"{', '.join(missing[:3])}{tied}; the checkpoint is incomplete or not this architecture"
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ArchitectureError(
                f"{source}: {name} has shape {list(shapes[name])}, config.json implies {list(shape)}; the weights "
                "do not match the config"
            )


def _check_rope(name: str, saved: torch.Tensor, arch: Architecture, source: str) -> None:
    if not _same_rope(saved, arch):
        raise ArchitectureError(
            f"{source}: {name} differs from the RoPE frequencies config.json implies; the config's rope "
            "settings are not the ones the model was trained with"
        )


def _check_tied(lm_head: torch.Tensor, embedding: torch.Tensor, source: str) -> None:
    if not torch.equal(lm_head, embedding):
        raise ArchitectureError(
            f"{source}: config.json says tie_word_embeddings=true, but lm_head.weight differs from the embedding; "
            "set tie_word_embeddings false if the output layer is its own"
        )


def hf_to_mcore(hf: dict[str, torch.Tensor], arch: Architecture, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Full (TP=1) mcore tensors from an HF state dict; every HF tensor is consumed or refused."""
    check_tensors({k: tuple(v.shape) for k, v in hf.items()}, arch, source)
    for name in (n for n in hf if _is_rope_buffer(n)):
        _check_rope(name, hf[name], arch, source)
    emb = hf["model.embed_tokens.weight"]
    if arch.tie_embeddings and "lm_head.weight" in hf:
        _check_tied(hf["lm_head.weight"], emb, source)
    out = {"embedding.word_embeddings.weight": emb, "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if not arch.tie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    nh, nkv, hd, h = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size
    for i in range(arch.num_layers):
        for hf_name, mc_name in _layer_pairs(i, arch):
            out[mc_name] = hf[hf_name]
        p, m = f"model.layers.{i}.self_attn.", f"decoder.layers.{i}.self_attention."
        q = hf[p + "q_proj.weight"].reshape(nkv, nh // nkv, hd, h)
        k = hf[p + "k_proj.weight"].reshape(nkv, 1, hd, h)
        v = hf[p + "v_proj.weight"].reshape(nkv, 1, hd, h)
        out[m + "linear_qkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, h)
        if arch.qkv_bias:
            qb = hf[p + "q_proj.bias"].reshape(nkv, nh // nkv, hd)
            kb, vb = (hf[p + f"{x}_proj.bias"].reshape(nkv, 1, hd) for x in "kv")
            out[m + "linear_qkv.bias"] = torch.cat([qb, kb, vb], 1).reshape(-1)
        mlp = f"model.layers.{i}.mlp."
        out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
            [hf[mlp + "gate_proj.weight"], hf[mlp + "up_proj.weight"]], 0
        )
    return out


def mcore_to_hf(mc: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """The inverse of `hf_to_mcore` (full TP=1 local-spec names in, HF names out)."""
    out = {
        "model.embed_tokens.weight": mc["embedding.word_embeddings.weight"],
        "model.norm.weight": mc["decoder.final_layernorm.weight"],
    }
    if not arch.tie_embeddings:
        out["lm_head.weight"] = mc["output_layer.weight"]
    nh, nkv, hd, h = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.hidden_size
    per_group = nh // nkv
    for i in range(arch.num_layers):
        for hf_name, mc_name in _layer_pairs(i, arch):
            out[hf_name] = mc[mc_name]
        p, m = f"model.layers.{i}.self_attn.", f"decoder.layers.{i}.self_attention."
        qkv = mc[m + "linear_qkv.weight"].reshape(nkv, per_group + 2, hd, h)
        out[p + "q_proj.weight"] = qkv[:, :per_group].reshape(nh * hd, h)
        out[p + "k_proj.weight"] = qkv[:, per_group].reshape(nkv * hd, h)
        out[p + "v_proj.weight"] = qkv[:, per_group + 1].reshape(nkv * hd, h)
        if arch.qkv_bias:
            b = mc[m + "linear_qkv.bias"].reshape(nkv, per_group + 2, hd)
            out[p + "q_proj.bias"] = b[:, :per_group].reshape(nh * hd)
            out[p + "k_proj.bias"] = b[:, per_group].reshape(nkv * hd)
            out[p + "v_proj.bias"] = b[:, per_group + 1].reshape(nkv * hd)
        gate, up = mc[f"decoder.layers.{i}.mlp.linear_fc1.weight"].chunk(2, 0)
        mlp = f"model.layers.{i}.mlp."
        out[mlp + "gate_proj.weight"], out[mlp + "up_proj.weight"] = gate, up
    return {k: v.contiguous() for k, v in out.items()}


def to_model_names(full: dict[str, torch.Tensor], model_names: set[str]) -> dict[str, torch.Tensor]:
    """Local-spec names -> the names of `model` (the TE spec fuses the block norms into linear layers)."""
    if not any(n.endswith("linear_qkv.layer_norm_weight") for n in model_names):
        return full
    out = {}
    for name, t in full.items():
        for local, te in _TE_NAMES.items():
            if name.endswith("." + local) and name.startswith("decoder.layers."):
                name = name[: -len(local)] + te
        out[name] = t
    return out


def _local_name(name: str) -> str:
    """The local-spec name of a parameter of either spec."""
    for local, te in _TE_NAMES.items():
        if name.endswith("." + te):
            name = name[: -len(te)] + local
    return name


def from_model_names(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `to_model_names`."""
    return {_local_name(name): t for name, t in full.items()}


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


def _weight_files(hf_dir: Path) -> list[Path]:
    # transformers reads model.safetensors first when a folder has both it and a sharded index; so do we.
    if (hf_dir / "model.safetensors").exists():
        return [hf_dir / "model.safetensors"]
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArchitectureError(
                f"{index}: not a safetensors index ({type(e).__name__}: {e}); re-download the checkpoint."
            ) from None
        missing = [n for n in files if not (hf_dir / n).exists()]
        if missing:
            raise FileNotFoundError(
                f"{index}: names {len(missing)} weight file(s) that {hf_dir} lacks, e.g. {missing[0]}; the "
                "download is incomplete: fetch the missing shards."
            )
        return [hf_dir / n for n in files]
    raise FileNotFoundError(f"{hf_dir}: no model.safetensors(.index.json); save the model with safetensors.")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A safetensors file that cannot be read (truncated, corrupt) is one line naming it."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as e:
        why = " ".join(str(e).split())
        raise ArchitectureError(
            f"{path}: not a readable safetensors file ({why}); it is damaged or was cut short: download it again."
        ) from None


class HFTensors:
    """The tensors of an HF checkpoint, read a slice at a time: `HFTensors.open` maps each safetensors
    file (headers only); `read` copies just the rows or columns asked for. Built on an in-memory
    state dict (``HFTensors(weights, source)``) it answers the same calls, so random initialisation
    loads through the same code."""

    def __init__(self, tensors: Mapping[str, Any], source: str, files: Mapping[str, Path] | None = None) -> None:
        # name -> a safetensors slice handle or a torch.Tensor: both are indexed as tensors are.
        self._tensors = tensors
        self._files = dict(files or {})
        self.source = source
        self.shapes: dict[str, tuple[int, ...]] = {
            n: tuple(t.get_shape()) if hasattr(t, "get_shape") else tuple(t.shape) for n, t in tensors.items()
        }

    @classmethod
    @contextlib.contextmanager
    def open(cls, hf_dir: str | Path) -> Iterator[HFTensors]:
        """The checkpoint in `hf_dir` (one file or sharded), its files open for the duration."""
        from safetensors import safe_open

        tensors: dict[str, Any] = {}
        files: dict[str, Path] = {}
        with contextlib.ExitStack() as stack:
            for path in _weight_files(Path(hf_dir)):
                with _reading(path):
                    f = stack.enter_context(safe_open(str(path), framework="pt"))
                    for name in f.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                        tensors[name], files[name] = f.get_slice(name), path
            yield cls(tensors, str(hf_dir), files)

    def read(self, name: str, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        """``name[rows, cols]`` (all of a dimension where None) in the stored dtype: only those bytes are read."""
        index = (slice(None) if rows is None else rows,) + (() if cols is None else (cols,))
        with _reading(self._files[name]) if name in self._files else contextlib.nullcontext():
            return self._tensors[name][index]


def read_hf_shapes(hf_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of an HF checkpoint, from the safetensors headers alone."""
    with HFTensors.open(hf_dir) as src:
        return dict(src.shapes)


def check_hf_checkpoint(hf_dir: str | Path, arch: Architecture) -> None:
    """Refuse a checkpoint whose tensors are not exactly those of `arch` (headers only: no weights read)."""
    check_tensors(read_hf_shapes(hf_dir), arch, str(hf_dir))


def read_hf_weights(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint (single or sharded safetensors), on the CPU."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(hf_dir)):
        with _reading(path):
            out.update(load_file(str(path)))
    return out


def _part(n: int, rank: int, size: int) -> slice:
    """Rank `rank`'s share of `n` rows (or columns) split evenly over `size` ranks."""
    k = n // size
    return slice(rank * k, (rank + 1) * k)


@functools.cache
def _direct_names(arch: Architecture) -> dict[str, str]:
    """Full-model mcore name -> HF name, for every parameter that is one HF tensor or a slice of one."""
    out = {
        "embedding.word_embeddings.weight": "model.embed_tokens.weight",
        "decoder.final_layernorm.weight": "model.norm.weight",
        # Tied: only a last pipeline stage that is not also the first has an output layer, its own copy
        # of the embedding.
        "output_layer.weight": "model.embed_tokens.weight" if arch.tie_embeddings else "lm_head.weight",
    }
    for i in range(arch.num_layers):
        out.update((mc, hf) for hf, mc in _layer_pairs(i, arch))
    return out


@functools.cache
def _fused_names(arch: Architecture) -> frozenset[str]:
    """Full-model mcore names of the parameters fused from several HF tensors (qkv, fc1)."""
    out = set()
    for i in range(arch.num_layers):
        out |= {f"decoder.layers.{i}.self_attention.linear_qkv.weight", f"decoder.layers.{i}.mlp.linear_fc1.weight"}
        if arch.qkv_bias:
            out.add(f"decoder.layers.{i}.self_attention.linear_qkv.bias")
    return frozenset(out)


def read_part(src: HFTensors, name: str, arch: Architecture, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank `tp_rank`'s part of the full model's parameter `name` (local-spec name), reading only that
    part: equal to ``tp_slice(name, hf_to_mcore(all tensors)[name], tp_rank, tp_size)``."""
    direct = _direct_names(arch)
    if name in direct:
        hf = direct[name]
        dim = _split_dim(name)
        if dim is None or tp_size == 1:
            return src.read(hf)
        if dim == 0:
            return src.read(hf, _part(src.shapes[hf][0], tp_rank, tp_size))
        return src.read(hf, None, _part(src.shapes[hf][1], tp_rank, tp_size))
    m = _LAYER_PARAM.fullmatch(name)
    if m is None or name not in _fused_names(arch):
        raise KeyError(name)
    hf = f"model.layers.{m[1]}."
    if m[2] == "mlp.linear_fc1.weight":
        rows = _part(arch.ffn_hidden_size, tp_rank, tp_size)
        return torch.cat([src.read(hf + "mlp.gate_proj.weight", rows), src.read(hf + "mlp.up_proj.weight", rows)], 0)
    # qkv: this rank's KV groups, each [its q heads; k; v] (the layout `hf_to_mcore` builds for all groups).
    kind = m[2].rsplit(".", 1)[1]  # weight or bias
    nh, nkv, hd = arch.num_heads, arch.num_kv_heads, arch.head_dim
    per_group, groups = nh // nkv, _part(nkv, tp_rank, tp_size)
    q = src.read(f"{hf}self_attn.q_proj.{kind}", slice(groups.start * per_group * hd, groups.stop * per_group * hd))
    k, v = (src.read(f"{hf}self_attn.{x}_proj.{kind}", slice(groups.start * hd, groups.stop * hd)) for x in "kv")
    n, tail = groups.stop - groups.start, tuple(q.shape[1:])
    parts = [q.reshape(n, per_group, hd, *tail), k.reshape(n, 1, hd, *tail), v.reshape(n, 1, hd, *tail)]
    return torch.cat(parts, 1).reshape(-1, *tail)


def load_hf_into(
    model: torch.nn.Module,
    hf_dir: str | Path,
    arch: Architecture,
    tp_rank: int,
    tp_size: int,
    *,
    global_names: Callable[[str], str] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Copy an HF checkpoint's weights into this rank's part of a GPTModel; every parameter is filled.

    Each parameter's part is read on its own (`read_part`): no rank reads more than it holds, apart
    from the RoPE buffers of old checkpoints and, for a tied model whose checkpoint also holds
    ``lm_head.weight``, the rows of it that this rank's embedding holds (compared with them).
    `global_names` (pipeline parallelism) maps a parameter name of this rank's stage to the full
    model's (`remit.train.parallel.global_name`); without it the model is the whole model, and every
    tensor of the checkpoint must find a parameter. `weights`, when given, is the full HF state dict
    to load instead of reading `hf_dir`'s files (random initialisation); `hf_dir` then only names the
    source in messages."""
    opened = HFTensors.open(hf_dir) if weights is None else contextlib.nullcontext(HFTensors(weights, str(hf_dir)))
    with opened as src:
        _fill(model, src, arch, tp_rank, tp_size, global_names)


def _fill(
    model: torch.nn.Module,
    src: HFTensors,
    arch: Architecture,
    tp_rank: int,
    tp_size: int,
    global_names: Callable[[str], str] | None,
) -> None:
    source = src.source
    check_tensors(src.shapes, arch, source)  # headers: refused before any weight is read
    for name in (n for n in src.shapes if _is_rope_buffer(n)):
        _check_rope(name, src.read(name), arch, source)
    params = dict(model.named_parameters())
    names = {n: _local_name(global_names(n) if global_names is not None else n) for n in params}
    known = set(_direct_names(arch)) | _fused_names(arch)
    missing = sorted(n for n, full in names.items() if full not in known)
    unexpected: list[str] = []
    if global_names is None:
        whole = known - ({"output_layer.weight"} if arch.tie_embeddings else set())
        unexpected = sorted(whole - set(names.values()))
    if missing or unexpected:
        raise ArchitectureError(
            f"{source}: weights do not fit the model (parameters left unfilled {missing[:4]}, tensors with no "
            f"parameter {unexpected[:4]})"
        )
    check_tied = arch.tie_embeddings and "lm_head.weight" in src.shapes
    with torch.no_grad():
        for name, param in params.items():
            part = read_part(src, names[name], arch, tp_rank, tp_size)
            if check_tied and names[name] in ("embedding.word_embeddings.weight", "output_layer.weight"):
                rows = _part(arch.vocab_size, tp_rank, tp_size)
                _check_tied(src.read("lm_head.weight", rows), part, source)
            if part.shape != param.shape:
                raise ArchitectureError(
                    f"{source}: {name} has shape {tuple(part.shape)} for this rank, the model "
                    f"expects {tuple(param.shape)}"
                )
            param.copy_(part)  # converts to the parameter's dtype as it copies: no temporary of its size


def gather_full_state(model: torch.nn.Module, tp_group) -> dict[str, torch.Tensor]:
    """Full (TP=1) mcore tensors, local-spec names, of a possibly tensor-parallel GPTModel (collective)."""
    full = {name: tp_gather(name, p.detach(), tp_group).cpu() for name, p in model.named_parameters()}
    return from_model_names(full)


def save_hf(full_mcore: dict[str, torch.Tensor], template_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an HF checkpoint: the template's config.json (unchanged) and tokenizer plus the converted weights."""
    from safetensors.torch import save_file

    template_dir, out_dir = Path(template_dir), Path(out_dir)
    cfg = json.loads((template_dir / "config.json").read_text())
    arch = architecture_from_config(cfg, str(template_dir / "config.json"))
    dtype = getattr(torch, str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), None)
    if not isinstance(dtype, torch.dtype):
        dtype = torch.float32
    tensors = {k: v.to(dtype).contiguous() for k, v in mcore_to_hf(full_mcore, arch).items()}
    check_tensors({k: tuple(v.shape) for k, v in tensors.items()}, arch, str(out_dir))
    for name, t in tensors.items():
        if not torch.isfinite(t).all():  # an overflow of a float16 template, or a diverged model
            raise ValueError(
                f"{out_dir}: {name} holds values that are not finite in {str(dtype).removeprefix('torch.')} (the "
                f"dtype of {template_dir / 'config.json'}); nothing was written. Export an earlier iteration, or "
                "set the template's dtype to bfloat16 or float32."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        if (template_dir / name).exists():
            shutil.copy2(template_dir / name, out_dir / name)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return out_dir
