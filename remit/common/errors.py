"""How remit's command lines end on an error: one line on stderr, never a traceback.

- `run_command(prog, fn)` runs `fn` and returns its exit status. A known error (bad input, bad flag,
  a refused resume: `ValueError` and its subclasses, `FileNotFoundError`, `ImportError` with an install
  hint, `TimeoutError`) prints ``PROG: error: MESSAGE`` and returns 2. An operating-system error (a
  read-only folder, a full disk, a path that is a folder) prints its file and cause with a fix and
  returns 1. Anything else is a defect in remit: one line naming the exception, how to see the
  traceback, and returns 1.
- ``REMIT_DEBUG=1`` re-raises every error, so the traceback is shown.
- Ctrl-C exits with 130 and a one-line note.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

#: Errors whose message is written for the user (file, value, fix): printed as they are.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ImportError, TimeoutError)

_OS_FIXES = {
    errno.ENOSPC: "free disk space (or point the output elsewhere) and run the same command again",
    errno.EDQUOT: "free space within your quota and run the same command again",
    errno.EACCES: "make the path writable for this user, or choose another path",
    errno.EPERM: "make the path writable for this user, or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.EISDIR: "the path is a folder: give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
}


def debug() -> bool:
    """True when REMIT_DEBUG asks for tracebacks."""
    return os.environ.get("REMIT_DEBUG", "") not in ("", "0")


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the file, the cause and what to do."""
    where = e.filename if e.filename is not None else "(no file named)"
    cause = e.strerror or type(e).__name__
    fix = _OS_FIXES.get(e.errno or -1, "check the path and its permissions, then run the same command again")
    return f"{where}: {cause}; {fix}"


def run_command(prog: str, fn: Callable[[], int | None], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `fn` (a command's body) and turn any error into one line on stderr and an exit status.

    `user_errors`: further exception types whose messages are written for the user (e.g. an engine's
    errors that name the model folder and the fix)."""
    try:
        status = fn()
    except KeyboardInterrupt:
        if debug():
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except USER_ERRORS + user_errors as e:
        if debug():
            raise
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        if debug():
            raise
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        if debug():
            raise
        detail = " ".join(str(e).split())[:300]
        print(
            f"{prog}: internal error: {type(e).__name__}: {detail} (run again with REMIT_DEBUG=1 for the traceback, "
            "and report it)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0 if status is None else int(status)
