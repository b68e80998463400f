"""Process groups: torchrun/Slurm-launched or a plain single process, gloo on the CPU, NCCL on GPUs."""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from remit.train import compat, cpu_compat


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(tensor_parallel: int, pipeline_parallel: int = 1) -> bool:
    """Join (or create) the default process group and Megatron's parallel groups.

    Returns True when this call created the process group (so the caller should tear it down).
    A process started without torchrun's environment runs as a world of one.
    """
    from megatron.core import parallel_state

    cpu_compat.apply()
    compat.quiet_deprecation_notices()
    created = False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ:  # torchrun / Slurm set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
            # A collective may wait on one slow rank (a first read of a large shard, a checkpoint
            # written to a busy file system): allow more than the default 10 minutes
            # (REMIT_DIST_TIMEOUT_MIN, default 60).
            dist.init_process_group(
                cpu_compat.backend(),
                timeout=datetime.timedelta(minutes=float(os.environ.get("REMIT_DIST_TIMEOUT_MIN", "60"))),
            )
        else:  # a plain process: a world of one, without touching os.environ (children inherit it)
            dist.init_process_group(
                cpu_compat.backend(), init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
        created = True
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(
            f"tensor_model_parallel_size {tensor_parallel} x pipeline_model_parallel_size {pipeline_parallel} "
            f"does not divide the world size {world}; launch a multiple of TP x PP processes "
            "(torchrun --nproc-per-node, --nnodes)."
        )
    if parallel_state.model_parallel_is_initialized():
        if (
            parallel_state.get_tensor_model_parallel_world_size() != tensor_parallel
            or parallel_state.get_pipeline_model_parallel_world_size() != pipeline_parallel
        ):
            raise ValueError("Megatron's parallel groups were initialised with another TP or PP size in this process")
    else:
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor_parallel, pipeline_model_parallel_size=pipeline_parallel
        )
    return created


def teardown(created: bool) -> None:
    """Undo `init` if it created the groups; groups made by the caller stay."""
    from megatron.core import parallel_state

    if not created:
        return
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
