"""Checkpoints with Megatron's dist_checkpointing: model, optimizer, LR schedule and the data position.

Layout of a run folder (Megatron-LM's): ``iter_0000100/`` holds one checkpoint, and
``latest_checkpointed_iteration.txt`` names the newest complete one. The tracker is written last,
after every rank has finished writing, so a crash mid-save leaves the previous checkpoint in
charge. dist_checkpointing reshards on load, so a run may resume with another TP or DP size.

Exact continuation: the model and Adam state are restored bit for bit, the LR schedule resumes at
its step, and the data order is a pure function of the seed and the number of consumed samples.

Loading a checkpoint never runs code from it: torch's checkpoint reader unpickles its `.metadata`,
its `common.pt` (0.16.1 to 0.18) and the non-tensor items of its `.distcp` files, and
`remit.train.safe_load` holds every one of those reads to an allow-list of the types a remit checkpoint
holds (`verify_checkpoint` checks them all first, so a refusal is one line). Every checkpoint remit
writes also carries `HASH_FILE`, the sha256 of each of its files, written after every rank has finished
and before the tracker names it; `verify_checkpoint` refuses a folder whose files do not match (or that
carries no hash file) unless the user trusts it (--trust-checkpoint). The hashes detect a file
damaged, planted or replaced after the save; they are not a signature (whoever can write the folder can
rewrite them), and the allow-list is not lifted by --trust-checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from remit.common.atomic import write_json_atomic, write_text_atomic
from remit.common.errors import os_error_in, os_error_in_text
from remit.train import compat
from remit.train.config import TRACKER_FILE
from remit.train.safe_load import check_pickles, restricted_loading

#: In each iter_* folder remit wrote: the sha256 of every other file of the checkpoint.
HASH_FILE = "remit-checkpoint-sha256.json"
_TRUST = "--trust-checkpoint"


class UntrustedCheckpointError(ValueError):
    """A checkpoint's files do not match the hashes remit recorded when it saved them (or it has none)."""


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of the checkpoint folder but the hash file itself."""
    return {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != HASH_FILE
    }


def write_hashes(folder: Path) -> None:
    write_json_atomic(folder / HASH_FILE, {"sha256": checkpoint_hashes(folder)})


def _own_files(folder: Path, rank: int, world: int) -> list[Path]:
    """The files of a saved checkpoint that `rank` hashes: dist_checkpointing names each rank's data files
    ``__{rank}_{i}.distcp``; the rest (metadata, common state) fall to rank 0. Every file exactly once."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != HASH_FILE)
    mine = []
    for p in files:
        owner = p.name.split("_")[2] if p.name.startswith("__") and p.suffix == ".distcp" else "0"
        owner_rank = int(owner) if owner.isdigit() and int(owner) < world else 0
        if owner_rank == rank:
            mine.append(p)
    return mine


def write_hashes_parallel(folder: Path) -> None:
    """`write_hashes` with the hashing spread over the ranks: each hashes the files it wrote, rank 0 writes
    the hash file. A collective."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    mine = {str(p.relative_to(folder)): _sha256(p) for p in _own_files(folder, rank, world)}
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    if rank == 0:
        merged = {k: v for part in parts for k, v in part.items()}
        write_json_atomic(folder / HASH_FILE, {"sha256": dict(sorted(merged.items()))})


def remove_older(root: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete checkpoints (those at or before the tracker's iteration);
    a folder newer than the tracker (a save in progress) is never touched. Returns what was removed."""
    root = Path(root)
    latest = latest_iteration(root)
    if latest is None:
        return []
    done = sorted(
        int(m.group(1))
        for p in root.iterdir()
        if p.is_dir() and (m := re.fullmatch(r"iter_(\d{7})", p.name)) and int(m.group(1)) <= latest
    )
    removed = [iteration_dir(root, it) for it in done[: max(len(done) - keep, 0)]]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def verify_checkpoint(folder: str | Path, trust: bool = False) -> None:
    """Refuse a checkpoint folder whose files differ from the hashes remit recorded, or that has none,
    unless `trust` (UntrustedCheckpointError); then, trusted or not, one whose pickles hold anything
    outside the allow-list (`remit.train.safe_load.UnsafeCheckpointError`) or that this megatron-core
    cannot read (ValueError). Both are one line."""
    folder = Path(folder)
    if not trust:
        _check_hashes(folder)
    compat.check_checkpoint_format(folder, check_pickles(folder))


def _check_hashes(folder: Path) -> None:
    path = folder / HASH_FILE
    if not path.exists():
        raise UntrustedCheckpointError(
            f"{folder}: no {HASH_FILE}, so this checkpoint was not written by this remit or was changed; its weights "
            f"and state would be loaded as they are: pass {_TRUST} only if you trust its source."
        )
    try:
        recorded = json.loads(path.read_text())["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError("not a mapping")
    except (ValueError, KeyError, TypeError) as e:
        raise UntrustedCheckpointError(
            f"{path}: unreadable ({type(e).__name__}: {e}); pass {_TRUST} only if you trust the checkpoint's source."
        ) from None
    actual = checkpoint_hashes(folder)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            problem = "is missing"
        elif name not in recorded:
            problem = "was added after the save"
        elif actual[name] != recorded[name]:
            problem = "differs from the hash recorded when it was saved"
        else:
            continue
        raise UntrustedCheckpointError(
            f"{folder / name}: {problem} ({path}): restore the checkpoint from a copy, resume from an earlier "
            f"iter_* folder, or pass {_TRUST} only if you trust the change."
        )


@contextlib.contextmanager
def _restricted() -> Iterator[None]:
    """Megatron-Core's checkpoint reads under the allow-list; its refusal comes out as itself, one line,
    not wrapped in the reader's per-rank exceptions."""
    with restricted_loading() as refusals:
        try:
            yield
        except BaseException:  # torch's CheckpointException derives from BaseException
            if refusals:
                raise refusals[0] from None
            raise


def read_common_state(root: str | Path, iteration: int) -> dict[str, Any]:
    """The checkpoint's plain (non-tensor) state: train state and scheduler state. Verify it first."""
    from megatron.core import dist_checkpointing

    with _restricted():
        return dict(dist_checkpointing.load_common_state_dict(str(iteration_dir(root, iteration))))


def _sharded_state(model, optimizer, is_loading: bool) -> dict[str, Any]:
    module = model.module if hasattr(model, "module") else model
    sd: dict[str, Any] = {"model": module.sharded_state_dict()}
    if optimizer is not None:
        sd["optimizer"] = optimizer.sharded_state_dict(sd["model"], is_loading=is_loading, metadata=_OPT_METADATA)
    return sd


@contextlib.contextmanager
def _saving_errors(target: Path) -> Iterator[None]:
    """Turn a failed save into one error naming the checkpoint folder. The operating-system error behind
    it is found in the exception chain, the ranks' failures, or (megatron-core 0.17 and later, whose
    exception names only the error's type) the writer's own error records."""
    with compat.writer_errors() as logged:
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # torch's CheckpointException derives from BaseException
            cause = os_error_in(e) or next(filter(None, map(os_error_in_text, logged)), None)
            if cause is None:
                if isinstance(e, Exception):
                    raise
                raise RuntimeError(f"{target}: the checkpoint writer failed: {' '.join(str(e).split())[:500]}") from e
            # The writer's own error (from a helper process, wrapped twice) names no file: name the folder.
            raise OSError(
                cause.errno,
                f"{cause.strerror or cause} while saving the checkpoint (the previous one stays the latest)",
                str(target),
            ) from e


def _begin_save(root: Path, iteration: int, model, optimizer, scheduler, state: dict[str, Any]) -> tuple[Path, dict]:
    """A fresh iter_* folder (a stale partial save of the same iteration is removed) and the state to save."""
    target = iteration_dir(root, iteration)
    if torch.distributed.get_rank() == 0:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
    torch.distributed.barrier()
    sd = _sharded_state(model, optimizer, is_loading=False)
    # Plain values are "common" state: dist_checkpointing stores them once, from rank 0.
    sd["scheduler"] = scheduler.state_dict()
    sd["train_state"] = dict(state, iteration=iteration)
    return target, sd


def _complete_save(root: Path, target: Path, iteration: int, keep_last: int | None) -> None:
    """After every rank has written: the hashes (each rank's own files, hashed in parallel), then the
    tracker, then --keep-last's removals. A collective."""
    write_hashes_parallel(target)  # before the tracker: a checkpoint the tracker names always has its hashes
    if torch.distributed.get_rank() == 0:
        write_text_atomic(root / TRACKER_FILE, f"{iteration}\n")
        if keep_last is not None:
            remove_older(root, keep_last)
    torch.distributed.barrier()


def save_checkpoint(
    root: str | Path,
    iteration: int,
    model,
    optimizer,
    scheduler,
    state: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Save on every rank (a collective); the tracker then moves to `iteration`."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    target, sd = _begin_save(root, iteration, model, optimizer, scheduler, state)
    with _saving_errors(target):
        dist_checkpointing.save(sd, str(target))
    torch.distributed.barrier()
    _complete_save(root, target, iteration, keep_last)
    return target


class AsyncSaver:
    """Checkpoints written by dist_checkpointing's background writer while training goes on.

    - `save` gathers the state (collectives, fast) and hands the writing to a forked process, which holds a
      copy-on-write snapshot of the host memory it writes (device tensors are copied to the host first).
    - `poll()` after each step (a collective: one small all-reduce) completes the saves every rank has
      finished: hashes, tracker, --keep-last. A failed write raises on every rank, naming the folder.
    - `wait()` blocks until every pending save is complete: the run never exits with one in flight.
    """

    def __init__(self, root: str | Path, keep_last: int | None) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.root = Path(root)
        self.keep_last = keep_last
        self._queue = AsyncCallsQueue()
        self.pending: list[Path] = []
        self.completed: list[Path] = []

    def save(self, iteration: int, model, optimizer, scheduler, state: dict[str, Any]) -> Path:
        from megatron.core import dist_checkpointing

        target, sd = _begin_save(self.root, iteration, model, optimizer, scheduler, state)
        with _saving_errors(target):
            request = dist_checkpointing.save(sd, str(target), async_sharded_save=True, **compat.async_save_options())

        def complete() -> None:
            _complete_save(self.root, target, iteration, self.keep_last)
            self.pending.remove(target)
            self.completed.append(target)

        request.add_finalize_fn(complete)
        self.pending.append(target)
        with _saving_errors(target):
            self._queue.schedule_async_request(request)
        return target

    def poll(self) -> None:
        with _saving_errors(self.pending[0] if self.pending else self.root):
            self._queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        with _saving_errors(self.pending[0] if self.pending else self.root):
            self._queue.maybe_finalize_async_calls(blocking=True)


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
    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        return
    source = iteration_dir(root, it)
    saved = dict(read_common_state(root, it).get("train_state", {})).get("optimizer_layout")
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


def load_checkpoint(
    root: str | Path, model, optimizer, iteration: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the given (default: latest) checkpoint into model and optimizer; return its train state and
    its scheduler state (`remit.train.schedule.resume_scheduler` decides how the schedule resumes)."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE}; there is no checkpoint to resume from.")
    source = iteration_dir(root, it)
    if optimizer is not None:
        _allocate_torch_adam_state(optimizer)
    sd = _sharded_state(model, optimizer, is_loading=True)
    with _restricted():
        loaded = dist_checkpointing.load(sd, str(source))
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        # no_grad: with fp32 parameters the distributed optimizer's main parameters are views of the
        # model's, and it copies the loaded values into them in place.
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
        _restore_torch_adam_steps(optimizer)
    return dict(loaded["train_state"]), dict(loaded["scheduler"])


def load_model_only(root: str | Path, model, iteration: int | None = None, trust: bool = False) -> int:
    """Load just the model weights (for export), after `verify_checkpoint`; return the iteration loaded."""
    from megatron.core import dist_checkpointing

    it = latest_iteration(root) if iteration is None else iteration
    if it is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE}; there is no checkpoint to export.")
    if not iteration_dir(root, it).is_dir():
        raise FileNotFoundError(f"{iteration_dir(root, it)}: missing; pick an existing iter_* with --iteration.")
    verify_checkpoint(iteration_dir(root, it), trust=trust)
    sd = _sharded_state(model, None, is_loading=True)
    with _restricted():
        loaded = dist_checkpointing.load(sd, str(iteration_dir(root, it)))
    module = model.module if hasattr(model, "module") else model
    module.load_state_dict(loaded["model"], strict=True)
    return it
