"""Checkpoints with Megatron's dist_checkpointing: model, optimizer, LR schedule and the data position.

Layout of a run folder (Megatron-LM's): ``iter_0000100/`` holds one checkpoint, and
``latest_checkpointed_iteration.txt`` names the newest complete one. The tracker is written last,
after every rank has finished writing, so a crash mid-save leaves the previous checkpoint in
charge. dist_checkpointing reshards on load, so a run may resume with another TP or DP size.

Exact continuation: the model and Adam state are restored bit for bit, the LR schedule resumes at
its step, and the data order is a pure function of the seed and the number of consumed samples.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from remit.shards.atomic import write_text_atomic
from remit.train.config import TRACKER_FILE

#: Keeps the optimizer's keys stable between save and load (no chained-optimizer prefix). The
#: distributed optimizer saves each rank's shard of its buffers as it is ('dp_reshardable', Megatron-LM's
#: default): fully parallel, and it may resume on another number of data-parallel ranks (but not another
#: TP or PP size). mcore's own default for this key fails to save in 0.16.1 ("flattened_range is not
#: supported").
_OPT_METADATA = {"chained_optim_avoid_prefix": True, "distrib_optim_sharding_type": "dp_reshardable"}


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: str | Path | None) -> int | None:
    """The iteration named by the tracker file, or None when `root` holds no finished checkpoint."""
    if root is None:
        return None
    tracker = Path(root) / TRACKER_FILE
    if not tracker.exists():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{tracker}: expected an iteration number, found {text!r}; fix or delete the file.")
    it = int(text)
    if not iteration_dir(root, it).is_dir():
        raise ValueError(
            f"{tracker}: names iteration {it} but {iteration_dir(root, it)} is missing; "
            "point the tracker at an existing iter_* folder."
        )
    return it


def _sharded_state(model, optimizer, is_loading: bool) -> dict[str, Any]:
    module = model.module if hasattr(model, "module") else model
    sd: dict[str, Any] = {"model": module.sharded_state_dict()}
    if optimizer is not None:
        sd["optimizer"] = optimizer.sharded_state_dict(sd["model"], is_loading=is_loading, metadata=_OPT_METADATA)
    return sd


def save_checkpoint(root: str | Path, iteration: int, model, optimizer, scheduler, state: dict[str, Any]) -> Path:
    """Save on every rank (a collective); rank 0 then moves the tracker to `iteration`."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    target = iteration_dir(root, iteration)
    rank = torch.distributed.get_rank()
    if rank == 0:
        if target.exists():  # a stale partial save of the same iteration
            shutil.rmtree(target)
        target.mkdir(parents=True)
    torch.distributed.barrier()
    sd = _sharded_state(model, optimizer, is_loading=False)
    # Plain values are "common" state: dist_checkpointing stores them once, from rank 0.
    sd["scheduler"] = scheduler.state_dict()
    sd["train_state"] = dict(state, iteration=iteration)
    dist_checkpointing.save(sd, str(target))
    torch.distributed.barrier()
    if rank == 0:
        write_text_atomic(root / TRACKER_FILE, f"{iteration}\n")
    torch.distributed.barrier()
    return target


# Without Apex or Transformer Engine, mcore 0.16.1's DistributedOptimizer runs torch's Adam, which
# keeps a `step` per parameter; two of its checkpoint paths do not expect that (Megatron-LM runs with
# Apex or TE, whose Adam keeps the step in the parameter group):
# - building the sharded state dict for loading first reads every parameter's `step`, which a fresh
#   optimizer does not have yet (AssertionError): `_allocate_torch_adam_state` gives it zeros, which
#   the load overwrites;
# - the per-parameter `step` is not among the tensors the load fills, so it would stay 0 (wrong bias
#   correction, a resumed curve that drifts): `_restore_torch_adam_steps` takes it from the parameter
#   group, where mcore's load_state_dict puts the saved step.


def _torch_adams(optimizer):
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if type(opt).__name__ == "DistributedOptimizer" and isinstance(inner, torch.optim.Optimizer):
            yield inner


def _allocate_torch_adam_state(optimizer) -> None:
    for inner in _torch_adams(optimizer):
        if len(inner.state) > 0:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }


def _restore_torch_adam_steps(optimizer) -> None:
    for inner in _torch_adams(optimizer):
        for group in inner.param_groups:
            if group.get("step") is None:
                continue
            for p in group["params"]:
                state = inner.state.get(p)
                if state and "step" in state:
                    step = state["step"]
                    state["step"] = torch.tensor(float(group["step"]), dtype=step.dtype, device=step.device)


def optimizer_layout(distributed: bool, tp: int, pp: int) -> dict[str, Any]:
    """What the saved optimizer state depends on; recorded in the train state of every checkpoint."""
    return {"distributed_optimizer": bool(distributed), "tensor_parallel": int(tp), "pipeline_parallel": int(pp)}


def check_optimizer_layout(root: str | Path, current: dict[str, Any], iteration: int | None = None) -> None:
    """Refuse, before loading anything, a resume whose optimizer state cannot be mapped onto this run:
    the distributed optimizer saves its own buffer layout (it reshards over data-parallel ranks only),
    which the plain optimizer cannot read, and the other way round."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        return
    source = iteration_dir(root, it)
    saved = dict(dist_checkpointing.load_common_state_dict(str(source)).get("train_state", {})).get("optimizer_layout")
    if not saved:  # written before the layout was recorded
        return
    flag = "--use-distributed-optimizer"
    if saved["distributed_optimizer"] != current["distributed_optimizer"]:
        raise ValueError(
            f"{source}: saved {'with' if saved['distributed_optimizer'] else 'without'} {flag}, and the two "
            f"optimizers store their state differently; resume {'with' if saved['distributed_optimizer'] else 'without'} "
            f"{flag}."
        )
    if saved["distributed_optimizer"] and (
        saved["tensor_parallel"] != current["tensor_parallel"]
        or saved["pipeline_parallel"] != current["pipeline_parallel"]
    ):
        raise ValueError(
            f"{source}: the distributed optimizer's state was saved at TP {saved['tensor_parallel']} x PP "
            f"{saved['pipeline_parallel']} and can change only the data-parallel size; resume with "
            f"--tensor-model-parallel-size {saved['tensor_parallel']} --pipeline-model-parallel-size "
            f"{saved['pipeline_parallel']}."
        )


def load_checkpoint(root: str | Path, model, optimizer, scheduler, iteration: int | None = None) -> dict[str, Any]:
    """Load the given (default: latest) checkpoint into model, optimizer and scheduler; return its train state."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE}; there is no checkpoint to resume from.")
    source = iteration_dir(root, it)
    if optimizer is not None:
        _allocate_torch_adam_state(optimizer)
    sd = _sharded_state(model, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(sd, str(source))
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        # no_grad: with fp32 parameters the distributed optimizer's main parameters are views of the
        # model's, and it copies the loaded values into them in place.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        _restore_torch_adam_steps(optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    return dict(loaded["train_state"])


def load_model_only(root: str | Path, model, iteration: int | None = None) -> int:
    """Load just the model weights (for export); return the iteration loaded."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE}; there is no checkpoint to export.")
    sd = _sharded_state(model, None, is_loading=True)
    loaded = dist_checkpointing.load(sd, str(iteration_dir(root, it)))
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(loaded["model"], strict=True)
    return it
