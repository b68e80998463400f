"""One model spread over Megatron's parallel groups, and whole-model tensors in and out of it.

- `Layout`: this rank's place (tensor, pipeline and data-parallel rank and size) and the decoder
  layers its pipeline stage holds (mcore's own split: `get_transformer_layer_offset`);
- `check_layout`: the pipeline and recompute settings fit the model (ValueError naming flag and fix);
- stage names: a stage numbers its layers from 0. `global_name` and `stage_state` translate between a
  stage's parameter names and the full model's, so the Hugging Face conversion, which knows only the
  full model, fills and reads any stage;
- `gather_full_model`: the full (TP=1, PP=1) tensors for the export, gathered over the
  tensor-parallel ranks, then sent stage by stage to the first stage, one tensor at a time;
- `sequence_parallel_spec`: mcore's torch RMSNorm fallback refuses sequence parallelism, because under
  it each TP rank sees only part of the sequence and the norm weights' gradients must be summed over
  the TP ranks. `SequenceParallelRMSNorm` marks its weight for that sum (done by mcore's
  `finalize_model_grads`) and replaces the fallback everywhere in the layer spec;
- `unwrap`: the GPTModel inside mcore's DDP and Float16Module wrappers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_FIRST_STAGE_PREFIXES = ("embedding.",)
_LAST_STAGE_PREFIXES = ("decoder.final_layernorm.", "output_layer.")
_TIED_OUTPUT = "output_layer.weight"
_EMBEDDING = "embedding.word_embeddings.weight"


def check_layout(
    num_layers: int, pp: int, recompute_method: str | None = None, recompute_num_layers: int | None = None
) -> None:
    """Pipeline stages get equal shares of the layers; a recompute group fits inside one stage."""
    if num_layers % pp:
        raise ValueError(
            f"pipeline_model_parallel_size {pp} does not divide the model's num_hidden_layers ({num_layers}); "
            "choose a pipeline size that divides the layer count."
        )
    per_stage = num_layers // pp
    if recompute_num_layers is not None and recompute_num_layers > per_stage:
        raise ValueError(
            f"recompute_num_layers {recompute_num_layers} exceeds the {per_stage} layers of a pipeline stage "
            f"(--recompute-method {recompute_method}); pass at most {per_stage}."
        )


@dataclass(frozen=True)
class Layout:
    """Where this rank sits in Megatron's parallel groups."""

    tp_size: int
    tp_rank: int
    pp_size: int
    pp_rank: int
    dp_size: int
    dp_rank: int
    layer_offset: int
    """Global index of this stage's first decoder layer."""
    num_layers: int
    """Decoder layers this stage holds."""

    @property
    def first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @classmethod
    def current(cls, config) -> Layout:
        """This rank's layout under Megatron's initialised parallel groups and `config`."""
        from megatron.core import parallel_state
        from megatron.core.transformer.transformer_block import get_num_layers_to_build
        from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

        return cls(
            tp_size=parallel_state.get_tensor_model_parallel_world_size(),
            tp_rank=parallel_state.get_tensor_model_parallel_rank(),
            pp_size=parallel_state.get_pipeline_model_parallel_world_size(),
            pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
            dp_size=parallel_state.get_data_parallel_world_size(),
            dp_rank=parallel_state.get_data_parallel_rank(),
            layer_offset=int(get_transformer_layer_offset(config)),
            num_layers=int(get_num_layers_to_build(config)),
        )


def global_name(name: str, layer_offset: int) -> str:
    """The full model's name of a stage's parameter (``decoder.layers.i.`` -> ``decoder.layers.offset+i.``)."""
    m = _LAYER.match(name)
    if m is None or layer_offset == 0:
        return name
    return f"decoder.layers.{int(m[1]) + layer_offset}.{name[m.end() :]}"


def stage_state(full: dict[str, torch.Tensor], layout: Layout, tied: bool) -> dict[str, torch.Tensor]:
    """The tensors of the full model that `layout`'s stage holds, under the stage's own names.

    With tied embeddings and several stages, the last stage holds its own copy of the embedding as
    its output layer (mcore keeps the two copies equal by summing their gradients)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in full.items():
        m = _LAYER.match(name)
        if m is not None:
            local = int(m[1]) - layout.layer_offset
            if 0 <= local < layout.num_layers:
                out[f"decoder.layers.{local}.{name[m.end() :]}"] = tensor
        elif name.startswith(_FIRST_STAGE_PREFIXES):
            if layout.first_stage:
                out[name] = tensor
        elif name.startswith(_LAST_STAGE_PREFIXES):
            if layout.last_stage:
                out[name] = tensor
        else:
            raise ValueError(f"{name}: no pipeline stage holds this tensor; extend remit.train.parallel.stage_state")
    if tied and layout.last_stage and not layout.first_stage:
        out[_TIED_OUTPUT] = full[_EMBEDDING]
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DistributedDataParallel and Float16Module."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def gather_full_model(model: torch.nn.Module, layout: Layout, tied: bool) -> dict[str, torch.Tensor] | None:
    """The full model's tensors (TP=1 layout, global names, on the CPU) on the first pipeline stage;
    None on the other stages. A collective over this rank's tensor- and pipeline-parallel groups."""
    from megatron.core import parallel_state

    from remit.train import cpu_compat
    from remit.train.convert import gather_full_state

    module = unwrap(model)
    stage = gather_full_state(module, parallel_state.get_tensor_model_parallel_group())
    stage = {
        global_name(n, layout.layer_offset): t
        for n, t in stage.items()
        if not (tied and n == _TIED_OUTPUT)  # the last stage's copy of the embedding
    }
    if layout.pp_size == 1:
        return stage
    group = parallel_state.get_pipeline_model_parallel_group()
    first = dist.get_global_rank(group, 0)
    metas: list = [None] * layout.pp_size
    dist.all_gather_object(metas, [(n, tuple(t.shape), t.dtype) for n, t in stage.items()], group=group)
    device = cpu_compat.device()
    out = dict(stage) if layout.first_stage else None
    for src_stage in range(1, layout.pp_size):
        src = dist.get_global_rank(group, src_stage)
        for name, shape, dtype in metas[src_stage]:
            if layout.pp_rank == src_stage:
                dist.send(stage[name].to(device).contiguous(), dst=first, group=group)
            elif out is not None:
                buf = torch.empty(shape, dtype=dtype, device=device)
                dist.recv(buf, src=src, group=group)
                out[name] = buf.cpu()
    return out


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm whose weight is marked ``sequence_parallel``: mcore's finalize_model_grads then
    sums its gradient over the TP ranks, each of which normalised only its part of the sequence."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_: object) -> None:
        super().__init__(hidden_size, eps=eps)
        # mcore reads this attribute to sum the weight gradient over the TP ranks.
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))  # noqa: B010


def _replace_torch_norms(spec, torch_norm):
    """A copy of a (nested) mcore spec with every `torch_norm` class replaced; None if there is none."""
    if spec is torch_norm:
        return SequenceParallelRMSNorm
    if not is_dataclass(spec) or isinstance(spec, type):
        return None
    changes = {}
    for f in fields(spec):
        new = _replace_torch_norms(getattr(spec, f.name), torch_norm)
        if new is not None:
            changes[f.name] = new
    return replace(spec, **changes) if changes else None


def sequence_parallel_spec(config, layer_spec):
    """The block spec of `layer_spec` with every norm of mcore's torch fallback (layer norms, q/k norms,
    the final norm) replaced by `SequenceParallelRMSNorm`. Specs whose norms come from Apex or
    Transformer Engine support sequence parallelism themselves and are returned unchanged."""
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    if config.normalization != "RMSNorm":
        raise ValueError(
            f"--sequence-parallel with normalization {config.normalization!r}: only RMSNorm models are "
            "supported without Transformer Engine; drop --sequence-parallel."
        )
    layer = _replace_torch_norms(layer_spec, WrappedTorchNorm)
    if layer is None:
        return layer_spec
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config), layer_norm=SequenceParallelRMSNorm
    )
