"""Fail points for crash tests: ``REMIT_FAILPOINT=name[:count]`` kills the process with SIGKILL the
count-th time (default first) execution passes `failpoint(name)`. Unset (always, in production), a
fail point is one environment lookup."""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get("REMIT_FAILPOINT")
    if not spec:
        return
    want, _, count = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
