"""One measurement in a fresh child process, for the benchmarks that need one: a peak RSS of its own,
a clean CUDA context, an out-of-memory error that stays in the child.

- `run`: start ``python SCRIPT --child SPEC`` (SPEC as JSON, the repository on PYTHONPATH) and return
  what it reported, with its exit status and output.
- `child_spec`: in the script, the SPEC it was started with (None: it runs as the parent).
- `report`: in the child, print the result line the parent reads.
- `rss_mib`: this process's current and peak resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "
CHILD_FLAG = "--child"


@dataclass(frozen=True)
class Child:
    result: dict[str, Any] | None
    """The JSON of the child's RESULT line; None if it printed none."""
    returncode: int
    stdout: str
    stderr: str


def run(
    script: str | Path, spec: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float | None = None
) -> Child:
    """Run `script` as a child on `spec`; `env` adds to this process's environment."""
    environ = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, str(script), CHILD_FLAG, json.dumps(spec)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
    result = json.loads(lines[0][len(RESULT) :]) if lines else None
    return Child(result, proc.returncode, proc.stdout, proc.stderr)


def child_spec(argv: list[str]) -> dict[str, Any] | None:
    """The spec of ``--child SPEC`` at the start of `argv` (the script's arguments), else None."""
    return json.loads(argv[1]) if len(argv) > 1 and argv[0] == CHILD_FLAG else None


def report(result: dict[str, Any]) -> None:
    print(RESULT + json.dumps(result), flush=True)


def rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    import resource

    current = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
