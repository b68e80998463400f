"""What differs between the Megatron-Core releases remit runs on (0.16.1 to 0.19.x), in one place.

Read from the sources of 0.16.1, 0.17.0/0.17.1, 0.18.0/0.18.2 and 0.19.0/0.19.2; the training tests run
on 0.16.1 (Python 3.11) and on the newest 0.19.x (Python 3.12). Everything else remit uses (the layer
specs, GPTModel, TransformerConfig, DDP, the optimizer and its sharded state, the schedules, the RNG
tracker) keeps its signature and behaviour over that range.

- 0.19 keeps a checkpoint's common (non-tensor) state inside the ``.distcp`` files, as the object
  ``common_state``; 0.16.1 to 0.18 write and read a ``common.pt`` beside them. 0.19 still reads
  ``common.pt``, so older checkpoints resume on it; the other way round `check_checkpoint_format`
  refuses, in one line, before anything is loaded.
- 0.19's DDP waits on ``torch.cuda.current_stream()`` at every gradient reduction (0.17 and 0.18 only
  with several distributed-optimizer instances, which remit never sets up): `remit.train.cpu_compat`
  gives the CPU a stream whose waits do nothing.
- 0.19 logs deprecation notices about GPTModel (pointing at HybridModel), its own synchronous save and
  the common.pt of older checkpoints: `quiet_deprecation_notices` drops those, unless --verbose.
- From 0.17 the checkpoint writer's exception names only the type of a failed write ("An error is caught
  while starting worker 0, error: <class 'OSError'>"); the error itself, with its errno, is only logged.
  `writer_errors` collects those records during a save, so that a full disk is still named in one line.
- ``ChainedOptimizer.step``, which `remit.train.guard.guarded_step` follows call for call, gains only what
  remit never turns on: 0.18 skips the update above ``grad_norm_skip_threshold`` (default infinite),
  0.19 clips parameters tagged with a separate grad-norm group by their own norm (remit tags none).
  tests/train/test_guard.py compares the two steps on both ends of the range.
- 0.19's asynchronous save defaults to NVIDIA's resiliency extension (``async_strategy="nvrx"``) and
  refuses without it: `async_save_options` asks for Megatron-Core's own writer where it is absent.
- From 0.17 the wheels need Python 3.12; 0.19 also needs triton to import (its MoE code imports it; the
  CUDA build of torch brings it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

#: The ``.distcp`` item that holds a 0.19 checkpoint's common state.
COMMON_STATE_ITEM = "common_state"
#: The file that holds it in checkpoints of 0.16.1 to 0.18.
COMMON_STATE_FILE = "common.pt"


def version_text() -> str:
    """The installed release, e.g. ``0.19.2``. ``megatron.core.__version__`` may carry a ``+<git hash>``
    (it asks git about the folder it is installed in), so it is read from ``package_info``."""
    from megatron.core import package_info

    return f"{package_info.MAJOR}.{package_info.MINOR}.{package_info.PATCH}"


def reads_common_state_item() -> bool:
    """Whether this release reads the common state from the ``.distcp`` files (0.19 and later)."""
    from megatron.core.dist_checkpointing import serialization

    # A feature test: 0.19 added this helper with the format; 0.16.1 to 0.18 have neither.
    return hasattr(serialization, "_legacy_common_state_exists")


def check_checkpoint_format(folder: Path, item_names: set[str]) -> None:
    """Refuse (ValueError, one line) a checkpoint this release cannot read: one written by 0.19 or later
    (no common.pt; its common state is the item ``common_state`` of the ``.distcp`` files, among
    `item_names`, the names in its ``.metadata``) under 0.16.1 to 0.18."""
    if (folder / COMMON_STATE_FILE).exists() or reads_common_state_item():
        return
    if any(name.split("/")[0] == COMMON_STATE_ITEM for name in item_names):
        raise ValueError(
            f"{folder}: written by megatron-core 0.19 or later (its common state is inside the .distcp files, "
            f"there is no {COMMON_STATE_FILE}), which megatron-core {version_text()} cannot read; resume with "
            "megatron-core >= 0.19 (Python 3.12)."
        )


#: Deprecation notices 0.19 logs about what remit does on purpose, by logger: building GPTModel (its
#: successor, HybridModel, is a migration of its own), the synchronous save (mcore's own writer, which
#: 0.19 runs through its deprecated async path) and reading the common.pt of an older checkpoint.
_NOTICES = {
    "megatron.core.models.gpt.gpt_model": "GPTModel IS DEPRECATED",
    "megatron.core.dist_checkpointing.strategies.torch": "MCore's async save is deprecated",
    "megatron.core.dist_checkpointing.strategies.common": "load_common is deprecated",
}


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_deprecation_notices() -> None:
    """Drop 0.19's deprecation notices about remit's deliberate choices (`_NOTICES`) unless the libraries'
    output was asked for (--verbose); safe to call repeatedly."""
    from remit.common.quiet import quiet_requested

    if not quiet_requested():
        return
    for name, prefix in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) for f in logger.filters):
            logger.addFilter(_DropNotice(prefix))


#: The checkpoint writer's logger (the same name in every release).
_WRITER_LOGGER = "megatron.core.dist_checkpointing.strategies.filesystem_async"


class _CollectErrors(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.messages.append(record.getMessage())
        from remit.common.quiet import quiet_requested

        return not quiet_requested()  # remit names the failure itself, in one line


@contextlib.contextmanager
def writer_errors() -> Iterator[list[str]]:
    """The error records of the checkpoint writer during a save, in order (printed only with --verbose)."""
    logger = logging.getLogger(_WRITER_LOGGER)
    collect = _CollectErrors()
    logger.addFilter(collect)
    try:
        yield collect.messages
    finally:
        logger.removeFilter(collect)


def async_save_options() -> dict[str, str]:
    """The keyword that makes `dist_checkpointing.save(..., async_sharded_save=True)` use Megatron-Core's own
    background writer. 0.16.1 to 0.18 have only that one; 0.19 adds `async_strategy` with NVIDIA's
    resiliency extension as its default, which refuses to run where that package is not installed."""
    import inspect

    from megatron.core import dist_checkpointing

    if "async_strategy" not in inspect.signature(dist_checkpointing.save).parameters:
        return {}
    try:
        from megatron.core.dist_checkpointing.strategies.nvrx import has_nvrx_async_support
    except ImportError:
        return {"async_strategy": "mcore"}
    return {} if has_nvrx_async_support() else {"async_strategy": "mcore"}
