"""No process outlives remit-train: the checkpoint writer's helpers die with the trainer.

Megatron-Core's checkpoint writer (dist_checkpointing, torch_dist format) starts two kinds of helper
processes on every rank, even for a synchronous save:

- a `multiprocessing.Manager` server (spawned: it re-imports the trainer, 200-400 MB), created once
  to hold a results queue, and left running when the trainer is killed (nothing ends it but a clean
  exit of its parent);
- one forked writer per file it writes, which finishes or hangs on its own when the trainer is killed.

`no_orphans()` removes the first and ties the second to the trainer:

- the results queue is a pipe-backed queue made in the trainer (it reaches the forked background writer
  of an asynchronous save), in place of the Manager's: no server process is started;
- every process forked by the trainer asks the kernel for SIGKILL when its parent dies
  (PR_SET_PDEATHSIG, Linux), and exits at once if the parent is already gone. SIGTERM, SIGINT and
  SIGKILL of the trainer then leave nothing behind; when the trainer stops on an exception (Ctrl-C
  during a save), `end_children()` kills them first, since multiprocessing would wait for them at exit. A half-written checkpoint is harmless: the tracker
  file names only a checkpoint whose save completed on every rank.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys

_PR_SET_PDEATHSIG = 1
_installed = False
_parent_pid = 0


def _note_parent() -> None:
    global _parent_pid
    _parent_pid = os.getpid()


def _die_with_parent() -> None:
    """In a freshly forked child: be killed when the forking process dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: nothing to tie the child to
        return
    if os.getppid() != _parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def no_orphans() -> None:
    """Install both measures in this process (once; idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from megatron.core.dist_checkpointing.strategies import filesystem_async

        if getattr(filesystem_async, "_results_queue", "absent") is None:
            filesystem_async._results_queue = _ResultsQueue()  # instead of a Manager server process
    except ImportError:  # no Megatron: nothing of its to tame
        pass
    if sys.platform.startswith("linux"):
        os.register_at_fork(before=_note_parent, after_in_child=_die_with_parent)


class _ResultsQueue:
    """The checkpoint writer's results queue without a server process. A pipe-backed queue made before any
    fork: the writer puts its results into it from the saving process itself (a synchronous save) or from
    the forked background writer (an asynchronous one). The writer reads it once the writing is over, with
    `get_nowait`; the item may still be in the putting process's feeder thread, so that read waits for it."""

    def __init__(self) -> None:
        import multiprocessing

        self._queue = multiprocessing.get_context("fork").Queue()

    def put(self, item: object) -> None:
        self._queue.put(item)

    def get(self, block: bool = True, timeout: float | None = None) -> object:
        return self._queue.get(block, timeout)

    def get_nowait(self) -> object:
        try:
            return self._queue.get(True, 300)  # only asked once the writer has finished: the item is coming
        except queue.Empty:
            raise queue.Empty from None


_interrupted = False


def _on_sigint(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """Remember a Ctrl-C even where Python swallows its KeyboardInterrupt: one that lands in a callback
    run around a fork (the checkpoint writer forks; logging's at-fork lock release is such a callback)
    is printed as "Exception ignored" and lost, and the run would go on. `raise_if_interrupted()` at
    each step raises it again. An ignored SIGINT (a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def raise_if_interrupted() -> None:
    if _interrupted:
        raise KeyboardInterrupt


def end_children() -> None:
    """Kill the helper processes this process started (the checkpoint writer's forks), so that a trainer
    stopped by an exception (Ctrl-C during a save) exits at once: at exit, multiprocessing would
    otherwise wait for each of them, and a writer whose parent stopped reading may wait forever."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=5)


__all__ = ["catch_interrupts", "end_children", "no_orphans", "raise_if_interrupted"]
