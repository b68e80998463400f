"""The model as Megatron-Core trains it: this rank's stage, its precision wrapper, DDP, optimizer, LR schedule.

- The stage: `build_gpt_model` with the embedding on the first pipeline stage, the final norm and
  output layer on the last, and mcore's share of the decoder layers on each.
- Precision (as Megatron-LM wraps its models): with bf16 the stage goes inside mcore's
  `Float16Module`, which casts every parameter and buffer to bf16 (including the norm weights that
  torch's RMSNorm would otherwise create in fp32), casts floating-point inputs on the first stage
  and returns the last stage's output (the per-token loss) in fp32. Megatron's optimizer keeps fp32
  main parameters and Adam state; gradients are accumulated and reduced in fp32.
- DDP: mcore's DistributedDataParallel, optionally with the distributed optimizer (main parameters,
  gradients and Adam state sharded over the data-parallel ranks) and with the gradient reduction
  overlapped with the backward pass (buckets of mcore's default size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from remit.train import cpu_compat
from remit.train.architecture import Architecture
from remit.train.config import TrainConfig
from remit.train.model import build_gpt_model, transformer_config
from remit.train.parallel import Layout, global_name
from remit.train.schedule import build_scheduler


@dataclass
class Engine:
    config: Any
    """mcore's TransformerConfig of the run."""
    layout: Layout
    model: Any
    """The model chunk the schedule runs: DistributedDataParallel(Float16Module(GPTModel)) in bf16."""
    optimizer: Any
    scheduler: Any


def run_transformer_config(cfg: TrainConfig, arch: Architecture, attention: str, *, initialise: bool = True):
    """The TransformerConfig for `cfg`: precision, parallelism and recompute from the flags. With
    `initialise` False, Megatron allocates the weights without initialising them (to be filled)."""
    return transformer_config(
        arch,
        tp=cfg.tensor_model_parallel_size,
        bf16=cfg.bf16,
        attention=attention,
        pp=cfg.pipeline_model_parallel_size,
        sequence_parallel=cfg.sequence_parallel,
        recompute_granularity=cfg.recompute_granularity,
        recompute_method=cfg.recompute_method,
        recompute_num_layers=cfg.recompute_num_layers,
        perform_initialization=initialise,
    )


def build_engine(
    cfg: TrainConfig,
    arch: Architecture,
    attention: str,
    seq_len: int,
    init_hf: Path | None,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    resuming: bool = False,
) -> Engine:
    """Build this rank's model, DDP, optimizer and schedule; fill the weights from `init_hf` if given, or
    from `init_state` (a full HF state dict: random initialisation). A resumed run (`resuming`) passes
    neither and loads them from its checkpoint instead. Megatron's groups must be initialised."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from remit.train.convert import load_hf_into

    if cfg.sequence_parallel and seq_len % cfg.tensor_model_parallel_size:
        raise ValueError(
            f"sequence_parallel: the sequence length {seq_len} is not divisible by tensor_model_parallel_size "
            f"{cfg.tensor_model_parallel_size}; choose a TP size that divides it, or drop --sequence-parallel."
        )
    # Weights about to be filled are not initialised first: Megatron would build each full matrix
    # in fp32 and split it, on every rank. Models with Transformer Engine layers keep the
    # initialisation: that those layers carry their tensor-parallel attributes without it is checked
    # only where TE is installed (tests/train/test_convert.py).
    from_hf = init_hf is not None or init_state is not None
    tcfg = run_transformer_config(cfg, arch, attention, initialise=not (from_hf or resuming) or attention == "te")
    layout = Layout.current(tcfg)
    model = build_gpt_model(
        arch,
        tcfg,
        max_sequence_length=seq_len,
        attention=attention,
        pre_process=layout.first_stage,
        post_process=layout.last_stage,
    ).to(cpu_compat.device())
    if from_hf:
        load_hf_into(
            model,
            init_hf if init_hf is not None else "--init-config (random weights)",
            arch,
            layout.tp_rank,
            layout.tp_size,
            global_names=partial(global_name, layer_offset=layout.layer_offset),
            weights=init_state,
        )
    if cfg.bf16:
        model = Float16Module(tcfg, model)
    ddp = DistributedDataParallel(
        tcfg,
        DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=cfg.overlap_grad_reduce,
            use_distributed_optimizer=cfg.use_distributed_optimizer,
        ),
        model,
    )
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.no_sync_func = ddp.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_eps=cfg.adam_eps,
            clip_grad=cfg.clip_grad,
            bf16=cfg.bf16,
            params_dtype=tcfg.params_dtype,
            use_distributed_optimizer=cfg.use_distributed_optimizer,
        ),
        [ddp],
    )
    scheduler = build_scheduler(optimizer, cfg)
    return Engine(config=tcfg, layout=layout, model=ddp, optimizer=optimizer, scheduler=scheduler)
