"""The CPU compatibility layer for Megatron-Core: the only place that patches anything.

Megatron-Core has no CPU path. To run tests and tiny demos on a machine without CUDA (with the gloo
backend) it needs:

1. ``torch.cuda.current_device()`` answering the CPU device: mcore places buffers (RoPE frequencies,
   the global memory buffer, DDP grad buffers) on it.
2. ``torch.cuda.synchronize()`` as a no-op: dist_checkpointing calls it around a save.
3. Megatron's own no-op RNG tracker instead of ``model_parallel_cuda_manual_seed``, which calls
   ``torch.cuda.manual_seed`` and fails without CUDA (see `seed_rng`).
4. A torch function mode that redirects the ``device='cuda'`` tensors and ``.cuda()`` calls hard-coded
   in mcore's optimizer, grad clipping and schedules to the CPU, and lets ``Tensor.type()`` answer
   ``torch.cuda.*`` for the type checks in grad clipping.
5. Activation recompute: mcore's checkpoint functions save the RNG states before a forward and
   restore them for the recomputation: the CPU generator (``torch.get_rng_state``), the CUDA
   generator and the tracker's states. Without CUDA there is no CUDA generator, so its getter in
   ``megatron.core.tensor_parallel.random`` returns an empty state and its setter does nothing. The
   CPU generator, which is the one that draws on the CPU (dropout included), is still saved and
   restored by mcore itself, so a recomputed forward draws the same numbers as the original one.
6. ``torch.cuda.current_stream()`` answering a stream whose waits do nothing: from 0.19 mcore's DDP
   waits on it at every gradient reduction (see `remit.train.compat`).

`apply()` does nothing when CUDA is available, so the same training code runs unchanged on GPUs with
NCCL. Nothing outside this module knows about any of it.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_applied = False
_mode: TorchFunctionMode | None = None
_saved: dict[str, object] = {}


def _is_cuda_device(device: object) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpu(TorchFunctionMode):
    """Route tensors that mcore asks to create on CUDA to the CPU.

    Kept minimal: it runs on every torch call, so it only inspects a ``device`` keyword and three
    Tensor methods.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and isinstance(out, str):
            # grad clipping asserts `grad.type() == 'torch.cuda.FloatTensor'`.
            return out.replace("torch.", "torch.cuda.", 1) if not out.startswith("torch.cuda.") else out
        return out


def _no_cuda_rng_state(*args, **kwargs) -> torch.Tensor:
    """The state of the CUDA generator that a CPU-only process does not have."""
    return torch.empty(0, dtype=torch.uint8)


def _set_no_cuda_rng_state(*args, **kwargs) -> None:
    return None


class _NoStream:
    """The stream of a process without CUDA: everything already ran in order, so waiting is a no-op."""

    def wait_event(self, event: object) -> None:
        return None

    def wait_stream(self, stream: object) -> None:
        return None


def cuda_absent() -> bool:
    return not torch.cuda.is_available()


def apply() -> bool:
    """Install the layer if CUDA is absent; return whether it is active. Safe to call repeatedly."""
    global _applied, _mode
    if not cuda_absent():
        return False
    if _applied:
        return True
    from megatron.core.tensor_parallel import random as mcore_random

    _saved.update(
        current_device=torch.cuda.current_device,
        synchronize=torch.cuda.synchronize,
        current_stream=torch.cuda.current_stream,
        get_cuda_rng_state=mcore_random._get_cuda_rng_state,
        set_cuda_rng_state=mcore_random._set_cuda_rng_state,
    )
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment,return-value]
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: _NoStream()  # type: ignore[assignment]
    mcore_random._get_cuda_rng_state = _no_cuda_rng_state
    mcore_random._set_cuda_rng_state = _set_no_cuda_rng_state
    _mode = _CudaToCpu()
    # Entered for the life of the process: mcore creates CUDA tensors in optimizer construction, in
    # every schedule call and in every optimizer step.
    _mode.__enter__()
    _applied = True
    return True


def remove() -> None:
    """Undo `apply()` (for tests that share a process with code that must not see the layer)."""
    global _applied, _mode
    if not _applied:
        return
    if _mode is not None:
        _mode.__exit__(None, None, None)
    from megatron.core.tensor_parallel import random as mcore_random

    torch.cuda.current_device = _saved["current_device"]  # type: ignore[assignment]
    torch.cuda.synchronize = _saved["synchronize"]  # type: ignore[assignment]
    torch.cuda.current_stream = _saved["current_stream"]  # type: ignore[assignment]
    mcore_random._get_cuda_rng_state = _saved["get_cuda_rng_state"]
    mcore_random._set_cuda_rng_state = _saved["set_cuda_rng_state"]
    _applied, _mode = False, None


def seed_rng(seed: int) -> None:
    """Seed torch and Megatron's tensor-parallel RNG tracker.

    On CUDA this is mcore's own ``model_parallel_cuda_manual_seed``. On the CPU it installs mcore's
    no-op tracker: dropout then draws from the CPU generator seeded here.
    """
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    torch.manual_seed(seed)
    if cuda_absent():
        initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    else:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def backend() -> str:
    """The torch.distributed backend for this machine."""
    return "gloo" if cuda_absent() else "nccl"


def device() -> torch.device:
    return torch.device("cpu") if cuda_absent() else torch.device("cuda", torch.cuda.current_device())
