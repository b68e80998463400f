"""`remit-train ARGS` with one fault injected into this process (inherited by the processes it forks).
Usage: fault_run.py FAULT [ARGS ...]

  enospc-save   every file write of the checkpoint writer fails with ENOSPC (a full disk)
  eacces-save   the write test of the --save folder fails with EACCES (a folder this user cannot write)
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path


def _enospc_save() -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    filesystem_async._write_item = full  # the writer's per-item write, in its forked helper too


def _eacces_save() -> None:
    write_bytes = Path.write_bytes

    def refused(self: Path, data) -> int:
        if self.name.startswith(".remit-write-test"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return write_bytes(self, data)

    Path.write_bytes = refused  # type: ignore[method-assign]


FAULTS = {"enospc-save": _enospc_save, "eacces-save": _eacces_save}

if __name__ == "__main__":  # dist_checkpointing's writer re-imports __main__
    FAULTS[sys.argv[1]]()
    from remit.train.cli import main

    raise SystemExit(main(sys.argv[2:]))
