"""Run an inspection command with DuckDB: one check that it is installed, one-line errors for the
failures a user can fix (a bad output folder or flag, DuckDB out of memory, a missing extra)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from remit.shards.manifest import ShardError

INSPECT_EXTRA = "pip install 'remit[inspect]'"


def run_with_duckdb(command: str, body: Callable[[], int]) -> int:
    """`body()`'s exit status; 2 for an unusable output, flag or install, 3 when DuckDB ran out of memory."""
    prefix = f"remit-annotate {command}"
    try:
        import duckdb
    except ImportError:
        print(f"{prefix}: needs DuckDB: {INSPECT_EXTRA}", file=sys.stderr)
        return 2
    try:
        return body()
    except (ShardError, ValueError) as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 2
    except duckdb.OutOfMemoryException as e:
        print(
            f"{prefix}: DuckDB ran out of memory ({str(e).splitlines()[0]}); raise --memory-limit or lower "
            "--threads: each thread holds one row group of token lists.",
            file=sys.stderr,
        )
        return 3
    except ImportError as e:
        print(f"{prefix}: {e}; install the inspection extras: {INSPECT_EXTRA}", file=sys.stderr)
        return 2
