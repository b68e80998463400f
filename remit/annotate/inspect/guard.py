"""Run an inspection command with DuckDB: one check that it is installed, one-line errors for the
failures a user can fix (a bad output folder or flag, DuckDB out of memory, a missing extra), and the
line that says a pack-only output has no weights to inspect."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from remit.shards.manifest import ShardError, read_manifest

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


def pack_only_note(root: str | Path) -> str | None:
    """For a pack-only output (`remit-annotate pack`, ``"scored": false``) the line saying that it holds no
    weights; None for a scored output."""
    manifest = read_manifest(root)
    if manifest.scored:
        return None
    return (
        f"{root}: a pack-only output (`remit-annotate pack`: token ids, not scored), so it holds no weights or "
        f"log-probs to inspect ({manifest.total_rows:,} rows, {manifest.total_tokens:,} tokens in "
        f"{len(manifest.shards)} shards). Score the corpus with `remit-annotate --base ... --rl ...` for weights."
    )
