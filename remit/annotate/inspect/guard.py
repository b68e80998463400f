"""Run an inspection command with DuckDB: one check that it is installed, one-line errors for the
failures a user can fix (a bad output folder or flag, DuckDB out of memory, a missing extra), and the
refusal of an output that holds no weights (RL pass only, or pack-only)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from remit.common.requires import install_hint
from remit.shards.manifest import Manifest, ShardError, read_manifest, repair_command

INSPECT_EXTRA = install_hint("inspect")


def require_weights(manifest: Manifest, root: str | Path) -> None:
    """Refuse an output without weights (annotated with --score rl, or pack-only), saying how to add them."""
    if manifest.passes == "both":
        return
    if manifest.passes == "rl":
        raise ShardError(
            f"{root}: the output holds the RL pass only (annotated with --score rl): log p_RL, but no weights, which "
            "need the base model's log-probs too. Add the base pass with "
            f"`{repair_command(root)} --score both` (it scores only the base model), or train this output as it is "
            "with `remit-train --weights online` or `none`."
        )
    raise ShardError(f"{root}: the output holds token ids only (passes = {manifest.passes}): no scores, no weights.")


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
    """For a pack-only output (`remit-annotate pack`, ``"passes": "none"``) the line saying that it holds no
    weights; None for a scored output."""
    manifest = read_manifest(root)
    if manifest.scored:
        return None
    return (
        f"{root}: a pack-only output (`remit-annotate pack`: token ids, not scored), so it holds no weights or "
        f"log-probs to inspect ({manifest.total_rows:,} rows, {manifest.total_tokens:,} tokens in "
        f"{len(manifest.shards)} shards). Score the corpus with `remit-annotate --base ... --rl ...` for weights."
    )
