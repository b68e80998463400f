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

#: Keeps the optimizer's keys stable between save and load (no chained-optimizer prefix).
_OPT_METADATA = {"chained_optim_avoid_prefix": True}


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


def load_checkpoint(root: str | Path, model, optimizer, scheduler, iteration: int | None = None) -> dict[str, Any]:
    """Load the given (default: latest) checkpoint into model, optimizer and scheduler; return its train state."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE}; there is no checkpoint to resume from.")
    source = iteration_dir(root, it)
    sd = _sharded_state(model, optimizer, is_loading=True)
    loaded = dist_checkpointing.load(sd, str(source))
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
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
