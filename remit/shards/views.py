"""The canned DuckDB views over an output folder (the SQL lives in ``remit/shards/sql/*.sql``).

- The SQL files run unchanged in the plain ``duckdb`` shell and from Python. Both name the output
  folder with a DuckDB variable the views read each time they are queried, then run the files in
  name order::

      SET VARIABLE remit_output = '/abs/path/to/output';

- ``python -m remit.shards.views OUTPUT`` prints that whole script, ready for ``duckdb -init``;
  `connect` does the same for Python.
- DuckDB itself is imported inside the functions that need it: ``import remit.shards`` never loads it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remit.common.requires import require
from remit.shards.manifest import ShardError, read_manifest, repair_command

if TYPE_CHECKING:  # pragma: no cover - typing only
    import duckdb

SQL_DIR = Path(__file__).parent / "sql"
#: The DuckDB variable that holds the output folder.
OUTPUT_VARIABLE = "remit_output"
#: Optional knobs the views read (with their defaults in the SQL): histogram bins, top-list length and
#: the minimum count of a token id in the top lists.
KNOBS = ("remit_bins", "remit_top_k", "remit_min_count")
#: Characters DuckDB's file globbing gives a meaning (a backslash escapes the next character).
GLOB_CHARACTERS = "*?[]{}\\"
_VIEW_RE = re.compile(r"^CREATE OR REPLACE VIEW (\w+)", re.MULTILINE)


def sql_files() -> list[Path]:
    """The shipped SQL files, in the order they must run."""
    files = sorted(SQL_DIR.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"{SQL_DIR}: no SQL files; the remit installation is incomplete (reinstall it)")
    return files


def view_names() -> list[str]:
    """Every view the SQL files create, in creation order."""
    return [name for f in sql_files() for name in _VIEW_RE.findall(f.read_text())]


def sql_literal(value: str) -> str:
    """`value` as a SQL string expression that holds it exactly and spans one line.

    Single quotes are doubled; every control character (a newline, a carriage return, ...) is written as
    ``chr(N)`` joined with ``||`` instead of raw, so no line of a generated script ends inside the value
    (the duckdb shell reads a line that starts with ``.`` as one of its own commands). NUL, which no path
    or DuckDB string can hold, is refused.
    """
    if "\0" in value:
        raise ValueError(f"{value!r}: holds a NUL character, which no SQL string can hold")
    parts: list[str] = []
    plain = ""
    for ch in value:
        if ch.isprintable() or ch == " ":
            plain += ch
            continue
        if plain:
            parts.append("'" + plain.replace("'", "''") + "'")
            plain = ""
        parts.append(f"chr({ord(ch)})")
    if plain or not parts:
        parts.append("'" + plain.replace("'", "''") + "'")
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def sql_comment(value: str) -> str:
    """`value` for a ``--`` comment line: every character that could end the line (or hide text) is shown
    as an escape (``\\n``, ``\\x1b``, ``\\u2028``), so the comment cannot end early and run the rest."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in value)


def check_output(root: str | Path, *, verify: bool = False) -> Path:
    """The absolute output folder, after checking that the views will read exactly its shards.

    Raises ShardError when the folder or its manifest is missing, when a shard the manifest lists is
    absent, or when a top-level ``*.parquet`` file is not in the manifest (the views' glob would read it).
    With `verify`, every column of every shard is also checked against the manifest's checksums (one
    pass over the data, a row group at a time), so that no figure comes from altered data.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ShardError(f"{root}: no such output folder. Pass the folder that holds manifest.json and the shards.")
    manifest = read_manifest(root)  # its error names the fix (repair, which finishes the run)
    try:
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        raise ShardError(
            f"{str(root)!a}: the path is not valid UTF-8, which DuckDB cannot open; rename the folder."
        ) from None
    if any(ch in str(root) for ch in GLOB_CHARACTERS):
        raise ShardError(
            f"{root}: the path contains a glob character ({GLOB_CHARACTERS}), which DuckDB's read_parquet would "
            "expand or read as an escape; "
            "rename or symlink the folder to a plain path."
        )
    listed = {s["file"] for s in manifest.shards}
    present = {p.name for p in root.glob("*.parquet")}
    if missing := sorted(listed - present):
        raise ShardError(
            f"{root}: {len(missing)} shard(s) listed in manifest.json are missing (first: {missing[0]}); "
            f"run `{repair_command(root)}` to re-score them."
        )
    if extra := sorted(present - listed):
        raise ShardError(
            f"{root}: {len(extra)} top-level .parquet file(s) are not in manifest.json (first: {extra[0]}); "
            "the views read every top-level *.parquet file, so move them out of the folder."
        )
    if not listed:
        raise ShardError(f"{root}: the manifest lists no shards; there is nothing to inspect.")
    if verify:
        from remit.shards.reader import Output

        Output(root=root, manifest=manifest).verify()
    return root


def setup_sql(root: str | Path, knobs: dict[str, Any] | None = None) -> str:
    """The SET VARIABLE statements that point the views at `root` (and set any `knobs`)."""
    lines = [f"SET VARIABLE {OUTPUT_VARIABLE} = {sql_literal(str(root))};"]
    for name, value in (knobs or {}).items():
        if name not in KNOBS:
            raise ValueError(f"unknown view setting {name!r}; known: {', '.join(KNOBS)}")
        if value is not None:
            lines.append(f"SET VARIABLE {name} = {int(value)};")
    return "\n".join(lines) + "\n"


def script(root: str | Path, knobs: dict[str, Any] | None = None) -> str:
    """A complete script for the duckdb shell: the variables, then every SQL file."""
    root = check_output(root)
    parts = [f"-- remit views over {sql_comment(str(root))}\n", setup_sql(root, knobs)]
    parts += [f"\n-- {f.name}\n{f.read_text()}" for f in sql_files()]
    return "".join(parts)


def create_views(con: duckdb.DuckDBPyConnection, root: str | Path, knobs: dict[str, Any] | None = None) -> None:
    """Point `con` at the output folder `root` and create every view in it."""
    root = check_output(root)
    con.execute(setup_sql(root, knobs))
    for f in sql_files():
        con.execute(f.read_text())


def connect(
    root: str | Path,
    *,
    memory_limit: str | None = None,
    threads: int | None = None,
    temp_directory: str | Path | None = None,
    knobs: dict[str, Any] | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views over `root` created.

    `memory_limit` (e.g. ``"512MB"``) caps DuckDB's buffer memory; the views stream, and the one
    aggregate whose groups grow with the output (per document) spills to `temp_directory`.
    """
    with require("inspect", "the views"):
        import duckdb
    root = check_output(root)  # before connecting, so a bad folder fails with the folder's message
    config: dict[str, Any] = {}
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    if threads is not None:
        config["threads"] = int(threads)
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    con = duckdb.connect(":memory:", config=config)
    # No progress bar: it writes to stdout, where `stats --json` writes its result.
    con.execute("SET enable_progress_bar = false")
    create_views(con, root, knobs)
    return con


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m remit.shards.views",
        description="Print a duckdb shell script that creates the remit views over OUTPUT "
        "(use: python -m remit.shards.views OUTPUT > remit.sql; duckdb -init remit.sql).",
    )
    parser.add_argument("output", nargs="?", help="annotation output folder (holds manifest.json and the shards)")
    parser.add_argument("--sql-dir", action="store_true", help="print the folder of the shipped .sql files instead")
    args = parser.parse_args(argv)
    if args.sql_dir:
        print(SQL_DIR)
        return 0
    if args.output is None:
        parser.error("give the OUTPUT folder (or --sql-dir)")
    try:
        sys.stdout.write(script(args.output))
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
