"""Every pickle of a checkpoint read through an allow-list: loading one sets weights and state, never runs code.

A dist_checkpointing folder holds pickles of two kinds:
- ``.metadata``, torch DCP's index (a plain pickle): read by `_Unpickler`, which builds only the classes
  of `ALLOWED` (DCP's metadata records, ``torch.Size``, dtypes, ``OrderedDict``, a path) and refuses any other;
- the non-tensor items of the ``.distcp`` files and ``common.pt`` (torch.save archives: the train and
  scheduler state, the optimizer's parameter groups, mcore's empty ``_extra_state``): read with torch's
  weights-only unpickler (tensors and containers of numbers and strings, plus the plain data types
  Megatron-Core registers with it when imported: argparse and simple namespaces, numpy arrays, its
  config dataclasses and enums).

`check_pickles` reads all of them before a load and names the first file that holds anything else
(`UnsafeCheckpointError`, one line). `restricted_loading` holds torch's and Megatron-Core's own readers
to the same rules while they load, so a file replaced after the check is refused as well, and collects
those refusals (the reader wraps them in its own errors).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

METADATA_FILE = ".metadata"

_DCP = "torch.distributed.checkpoint"
#: (module, name) of every class or function a remit checkpoint's ``.metadata`` refers to (torch dtypes
#: too, see `_allowed`). Megatron-Core stores the save plans in it, hence the planner's records.
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    [
        *(
            (f"{_DCP}.metadata", name)
            for name in (
                "Metadata",
                "MetadataIndex",
                "StorageMeta",
                "TensorStorageMetadata",
                "BytesStorageMetadata",
                "ChunkStorageMetadata",
                "TensorProperties",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        *((f"{_DCP}.planner", name) for name in ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData")),
        (f"{_DCP}.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        # StorageMeta.checkpoint_id, where torch's writer was given a path rather than a string.
        ("pathlib", "PosixPath"),
        ("pathlib._local", "PosixPath"),  # Python 3.13
    ]
)

_FIX = (
    "a checkpoint remit writes holds nothing else, and unpickling it could run code of the file's choosing, "
    "so it is refused whatever --trust-checkpoint says; resume from another iter_* folder or a copy"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds a pickled object outside the allow-list (or cannot be read as one)."""


def _allowed(module: str, name: str) -> bool:
    if (module, name) in ALLOWED:
        return True
    # torch.float32 and the other dtypes (read from the module's dict: torch's __getattr__ imports).
    return module == "torch" and isinstance(vars(torch).get(name), torch.dtype)


class _Unpickler(pickle.Unpickler):
    """A pickle reader that builds only `ALLOWED` classes; `source` names the file in its refusal."""

    def __init__(self, file: BinaryIO, source: str, refusals: list[UnsafeCheckpointError] | None = None) -> None:
        super().__init__(file)
        self.source = source
        self.refusals = refusals

    def _refuse(self, what: str) -> UnsafeCheckpointError:
        error = UnsafeCheckpointError(f"{self.source}: holds {what}; {_FIX}.")
        if self.refusals is not None:
            self.refusals.append(error)
        return error

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise self._refuse(f"a pickled reference to {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise self._refuse("a pickled external reference")


def load_metadata(path: Path) -> Any:
    """DCP's ``.metadata`` at `path`, read through the allow-list."""
    try:
        with path.open("rb") as f:
            return _Unpickler(f, str(path)).load()
    except UnsafeCheckpointError:
        raise
    except FileNotFoundError:
        raise UnsafeCheckpointError(
            f"{path}: missing, so the folder is not a complete checkpoint; resume from another iter_* folder."
        ) from None
    except Exception as e:  # a truncated or garbled pickle
        raise UnsafeCheckpointError(f"{path}: not a readable checkpoint index ({type(e).__name__}: {e}).") from None


def _refused(e: BaseException) -> str:
    """What torch's weights-only unpickler refused, from its (long) message."""
    match = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"a pickled reference to {match[1]}" if match else "a pickle outside torch's weights-only types"


def _weights_only_load(data: bytes | Path, source: str) -> None:
    """Read one torch.save archive with torch's weights-only unpickler; the object is dropped."""
    try:
        torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{source}: holds {_refused(e)}; {_FIX}.") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnsafeCheckpointError(f"{source}: not a readable archive ({type(e).__name__}: {first}).") from None


def _inside(folder: Path, relative: str) -> Path:
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise UnsafeCheckpointError(f"{folder / METADATA_FILE}: points outside the checkpoint, at {relative!r}.")
    return path


def check_pickles(folder: str | Path) -> set[str]:
    """Read every pickle of the checkpoint `folder` through the allow-list, refusing the first that holds
    anything else (UnsafeCheckpointError); return the item names its ``.metadata`` lists."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    folder = Path(folder)
    metadata = load_metadata(folder / METADATA_FILE)
    try:
        items = dict(metadata.state_dict_metadata)
        storage = dict(metadata.storage_data)
        byte_items = [(i.fqn, s) for i, s in storage.items() if isinstance(items.get(i.fqn), BytesStorageMetadata)]
    except (AttributeError, TypeError) as e:
        raise UnsafeCheckpointError(f"{folder / METADATA_FILE}: not a checkpoint index ({e}).") from None
    for name, info in byte_items:
        source = f"{folder / info.relative_path} (item {name})"
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpointError(f"{source}: stored through {list(info.transform_descriptors)}; {_FIX}.")
        with _inside(folder, info.relative_path).open("rb") as f:
            f.seek(int(info.offset))
            _weights_only_load(f.read(int(info.length)), source)
    common = folder / "common.pt"
    if common.exists():
        _weights_only_load(common, str(common))
    return set(items)


class _RestrictedPickle:
    """The ``pickle`` module as torch's DCP file reader sees it under `restricted_loading`."""

    def __init__(self, refusals: list[UnsafeCheckpointError]) -> None:
        self.refusals = refusals

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)

    def load(self, file: BinaryIO, **_: Any) -> Any:
        return _Unpickler(file, str(getattr(file, "name", METADATA_FILE)), self.refusals).load()


@contextlib.contextmanager
def restricted_loading() -> Iterator[list[UnsafeCheckpointError]]:
    """Within: DCP reads ``.metadata`` through the allow-list, and every ``torch.load`` (``common.pt``,
    the ``.distcp`` items, which torch's planner reads with ``weights_only=False``) is weights-only.
    Yields the refusals made inside, in order: torch's reader may wrap them in exceptions of its own, or
    keep only their text (a failed index read becomes an AssertionError naming it)."""
    from torch.distributed.checkpoint import filesystem

    if not hasattr(filesystem, "pickle"):
        raise RuntimeError(
            f"torch {torch.__version__} reads checkpoint indexes in a way remit cannot restrict; use a torch "
            "release that torch.distributed.checkpoint.filesystem reads with pickle.load (up to 2.14 do)."
        )
    refusals: list[UnsafeCheckpointError] = []
    torch_load = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return torch_load(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            source = str(f) if isinstance(f, (str, Path)) else "an item of a .distcp file"
            refusals.append(UnsafeCheckpointError(f"{source}: holds {_refused(e)}; {_FIX}."))
            raise refusals[-1] from None

    saved_pickle = filesystem.pickle
    saved_env = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    filesystem.pickle = _RestrictedPickle(refusals)  # type: ignore[assignment]
    torch.load = weights_only_load
    # torch's own switch as well, for a caller that holds torch.load under another name.
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield refusals
    finally:
        filesystem.pickle = saved_pickle
        torch.load = torch_load
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
