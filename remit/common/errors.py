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
import re
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


#: Messages that name an operating-system error where the exception carries no errno (pyarrow's IO errors,
#: torch's checkpoint writer, errors passed on as text from a helper process).
_OS_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def os_error_in_text(text: str) -> OSError | None:
    """The operating-system error a message names (errors passed on as text lose their type): a known
    message, or an ``[Errno N]`` tag."""
    text = " ".join(text.split())
    for message, code in _OS_MESSAGES.items():
        if message in text:
            return OSError(code, message)
    match = re.search(r"\[Errno (\d+)\]", text)
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    return None


def os_error_in(e: BaseException, depth: int = 0) -> OSError | None:
    """The operating-system error behind `e`, if any: `e` itself, its cause or context, the errors a
    wrapper keeps (torch's CheckpointException keeps each rank's in `failures`), or an error known by its
    message alone. An OSError without an errno gets the one its message names."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    found = os_error_in_text(str(e))
    if found is not None:
        return OSError(found.errno, found.strerror, getattr(e, "filename", None))
    if depth > 8:
        return None
    failures = [f[0] if isinstance(f, tuple) else f for f in dict(getattr(e, "failures", {}) or {}).values()]
    for inner in (e.__cause__, e.__context__, *failures, *getattr(e, "args", ())):
        if isinstance(inner, BaseException):
            found = os_error_in(inner, depth + 1)
            if found is not None:
                return found
    return e if isinstance(e, OSError) else None


def with_path(e: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """`e` as an OSError naming `path` when it is an operating-system error that names no file (pyarrow's
    and torch's writers raise such errors); else `e` unchanged."""
    cause = os_error_in(e)
    if cause is None or cause.filename is not None:
        return e
    return OSError(cause.errno, cause.strerror or str(cause), os.fspath(path))


def describe_os_error(e: OSError) -> str:
    """One line for an operating-system error: the file, the cause and what to do."""
    where = e.filename if e.filename is not None else "(no file named)"
    cause = e.strerror or type(e).__name__
    fix = _OS_FIXES.get(e.errno or -1, "check the path and its permissions, then run the same command again")
    return f"{where}: {cause}; {fix}"


def _say(line: str) -> None:
    """One line on stderr in a single write: the ranks of a job share one stderr, and a line written in
    two parts (text, then newline) can be cut by another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_command(prog: str, fn: Callable[[], int | None], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `fn` (a command's body) and turn any error into one line on stderr and an exit status.

    `user_errors`: further exception types whose messages are written for the user (e.g. an engine's
    errors that name the model folder and the fix)."""
    try:
        status = fn()
    except KeyboardInterrupt:
        if debug():
            raise
        _say(f"{prog}: interrupted")
        return 130
    except USER_ERRORS + user_errors as e:
        if debug():
            raise
        _say(f"{prog}: error: {e}")
        return 2
    except OSError as e:
        if debug():
            raise
        _say(f"{prog}: error: {describe_os_error(os_error_in(e) or e)}")
        return 1
    except Exception as e:
        if debug():
            raise
        cause = os_error_in(e)
        if cause is not None:  # an OS error wrapped by a library (a full disk inside a writer)
            _say(f"{prog}: error: {describe_os_error(cause)}")
            return 1
        detail = " ".join(str(e).split())[:300]
        _say(
            f"{prog}: internal error: {type(e).__name__}: {detail} (run again with REMIT_DEBUG=1 for the traceback, "
            "and report it)"
        )
        return 1
    return 0 if status is None else int(status)
