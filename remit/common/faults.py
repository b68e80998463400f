"""Fail points for crash tests: ``REMIT_FAILPOINT=name[:count][,name[:count]...]`` kills the process
with SIGKILL the count-th time (default: the first) execution passes `failpoint(name)`.

SIGKILL, not an exception: nothing is cleaned up, no `finally` runs, exactly as when the machine or the
scheduler kills a worker. Unset (always, in production), a fail point is one environment lookup.

The points, in the order a unit passes them:
  base-saved         the unit's base log-probs were renamed into place (pass 1)
  before-shard       the RL pass scored the unit, nothing of its shard is written yet
  shard-tmp-written  the shard's temporary file is written, not yet verified or renamed
  after-shard        the shard is renamed into place, its completion record not yet written
  after-done         the completion record is written, the base log-probs not yet deleted
And once per output:
  after-manifest     finalize wrote the manifest, the work folder is not yet removed
"""

from __future__ import annotations

import os
import signal

POINTS = ("base-saved", "before-shard", "shard-tmp-written", "after-shard", "after-done", "after-manifest")

_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    wanted: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"REMIT_FAILPOINT={spec!r}: unknown fail point {name!r}; known: {', '.join(POINTS)}")
        try:
            wanted[name] = int(count or 1)
        except ValueError:
            raise ValueError(f"REMIT_FAILPOINT={spec!r}: count {count!r} of {name!r} is not an integer") from None
    return wanted


def failpoint(name: str) -> None:
    spec = os.environ.get("REMIT_FAILPOINT")
    if not spec:
        return
    want = _parse(spec).get(name)
    if want is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= want:
        os.kill(os.getpid(), signal.SIGKILL)
