"""`remit-annotate stats OUTPUT`: are these weights sensible? Tables from the canned DuckDB views.

- The run summary, the weight histogram, the per-source breakdown, weight against position in a
  segment, the most up- and down-weighted token ids (decoded with the output's tokenizer) and
  documents; ``--json`` prints the same data as one JSON object.
- Every statistic over weights or discrepancy counts scored tokens only (those with a log-prob; a
  segment's first token has none).
- DuckDB and transformers are imported inside the functions that use them: ``--help`` loads neither.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remit.annotate.inspect.guard import pack_only_note, require_weights, run_with_duckdb
from remit.annotate.inspect.tokens import load_tokenizer, token_texts

DEFAULT_TOP_K = 20
DEFAULT_MIN_COUNT = 20
DEFAULT_BINS = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="annotation output folder (manifest.json + shard-*.parquet)")
    parser.add_argument("--json", action="store_true", help="print the tables as one JSON object instead of text")
    # --- what to show ---
    g = parser.add_argument_group("tables")
    g.add_argument(
        "--top-k",
        type=int,
        default=DEFAULT_TOP_K,
        metavar="N",
        help=f"token ids and documents in each top list (default {DEFAULT_TOP_K})",
    )
    g.add_argument(
        "--min-count",
        type=int,
        default=DEFAULT_MIN_COUNT,
        metavar="N",
        help="a token id or document enters a top list only with at least this many scored tokens "
        f"(default {DEFAULT_MIN_COUNT})",
    )
    g.add_argument(
        "--bins",
        type=int,
        default=DEFAULT_BINS,
        metavar="N",
        help=f"weight histogram bins over [1-eps, 1+eps] (default {DEFAULT_BINS})",
    )
    g.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="DIR",
        help="tokenizer folder for decoding token ids (default: the manifest's tokenizer path; none found: raw ids)",
    )
    # --- engine ---
    g = parser.add_argument_group("DuckDB")
    g.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="DuckDB memory limit, e.g. 2GB (default: DuckDB's, 80%% of RAM). The queries stream: "
        "each thread holds one row group of token lists, ~200-350 MB for 4k-token rows",
    )
    g.add_argument("--threads", type=int, default=None, metavar="N", help="DuckDB threads (default: all cores)")


# ----------------------------------------------------------------------------------------------------
# Collecting the numbers


def _records(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def collect(
    root: str | Path,
    *,
    top_k: int = DEFAULT_TOP_K,
    min_count: int = DEFAULT_MIN_COUNT,
    bins: int = DEFAULT_BINS,
    memory_limit: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Every table `stats` prints, as plain Python values (JSON-ready, token ids not yet decoded)."""
    from remit.shards.manifest import read_manifest
    from remit.shards.views import check_output, connect

    for name, value, low in (("top_k", top_k, 1), ("min_count", min_count, 1), ("bins", bins, 1)):
        if value < low:
            raise ValueError(f"{name} must be at least {low}; got {value}")
    root = check_output(root, verify=True)  # no figure from a shard whose data was altered
    require_weights(read_manifest(root), root)
    knobs = {"remit_bins": bins, "remit_top_k": top_k, "remit_min_count": min_count}
    # Only the per-document aggregate can outgrow memory (its groups grow with the corpus); it spills here.
    with tempfile.TemporaryDirectory(prefix="remit-duckdb-") as spill:
        con = connect(root, memory_limit=memory_limit, threads=threads, temp_directory=spill, knobs=knobs)
        try:
            # One streaming pass over the tokens feeds four views; cache its few thousand rows.
            con.execute("CREATE OR REPLACE TEMP TABLE remit_token_stats AS FROM remit_token_stats")
            summary = _records(con, "FROM remit_summary")[0]
            doc_filter = f"WHERE scored_tokens >= {int(min_count)}"
            result = {
                "output": str(root),
                "summary": _summary(summary),
                "weight_histogram": _records(con, "FROM remit_weight_histogram"),
                "by_source": _records(con, "FROM remit_by_source"),
                "by_position": _records(con, "FROM remit_weight_by_position"),
                "top_up_tokens": _records(con, "FROM remit_top_up_tokens"),
                "top_down_tokens": _records(con, "FROM remit_top_down_tokens"),
                "top_up_documents": _records(
                    con, f"FROM remit_by_document {doc_filter} ORDER BY mean_weight DESC, doc_id LIMIT {int(top_k)}"
                ),
                "top_down_documents": _records(
                    con, f"FROM remit_by_document {doc_filter} ORDER BY mean_weight ASC, doc_id LIMIT {int(top_k)}"
                ),
                "settings": {"top_k": top_k, "min_count": min_count, "bins": bins},
            }
        finally:
            con.close()
    return result


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """The summary row with its quantile lists turned into {level: value} maps."""
    levels = row.pop("quantile_levels")
    for key in ("weight_quantiles", "discrepancy_quantiles"):
        values = row.get(key) or [None] * len(levels)
        row[key] = {_level_name(q): v for q, v in zip(levels, values)}
    return row


def _level_name(q: float) -> str:
    return {0.0: "min", 1.0: "max"}.get(float(q), f"p{round(float(q) * 100):02d}")


# ----------------------------------------------------------------------------------------------------
# Token ids to text


def decode_top_tokens(result: dict[str, Any], tokenizer: Any) -> None:
    """Add a "text" field to every top-list token (None without a tokenizer)."""
    for key in ("top_up_tokens", "top_down_tokens"):
        rows = result[key]
        for row, text in zip(rows, token_texts(tokenizer, [r["token_id"] for r in rows])):
            row["text"] = text


# ----------------------------------------------------------------------------------------------------
# Text tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Aligned columns: numbers right-aligned, text left-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _shown_token(row: dict[str, Any]) -> str:
    # repr() quotes the text and escapes newlines and control characters, so a column stays one line.
    return repr(row["text"]) if row.get("text") is not None else f"<id {row['token_id']}>"


def _summary_sections(result: dict[str, Any]) -> list[str]:
    """The summary table and the quantiles."""
    s = result["summary"]
    overview = [
        ("rows", s["rows"]),
        ("segments", s["segments"]),
        ("tokens", s["tokens"]),
        ("scored tokens", s["scored_tokens"]),
        ("mean weight", s["mean_weight"]),
        ("mean discrepancy (logp_rl - logp_base)", s["mean_discrepancy"]),
        ("tokens at low clip (1-eps)", s["tokens_at_low"]),
        ("share at low clip %", _pct(s["share_at_low"])),
        ("tokens at high clip (1+eps)", s["tokens_at_high"]),
        ("share at high clip %", _pct(s["share_at_high"])),
    ]
    levels = list(s["weight_quantiles"])
    return [
        format_table(["summary", "value"], overview, "\n## Summary"),
        format_table(
            ["quantile", "weight", "discrepancy"],
            [(k, s["weight_quantiles"][k], s["discrepancy_quantiles"][k]) for k in levels],
            "\n## Quantiles (weights to 1e-4, discrepancy to 1e-3)",
        ),
    ]


def _histogram_section(result: dict[str, Any]) -> str:
    hist = result["weight_histogram"]
    peak = max((b["tokens"] for b in hist), default=0) or 1
    return format_table(
        ["lower", "upper", "tokens", "share %", ""],
        [(b["lower"], b["upper"], b["tokens"], _pct(b["share"]), "#" * round(30 * b["tokens"] / peak)) for b in hist],
        "\n## Weight histogram",
    )


def _breakdown_sections(result: dict[str, Any]) -> list[str]:
    """Weights by source and by position inside the segment."""
    by_source = format_table(
        ["source", "rows", "tokens", "scored", "mean weight", "mean discrepancy", "at low %", "at high %"],
        [
            (
                r["source"],
                r["rows"],
                r["tokens"],
                r["scored_tokens"],
                r["mean_weight"],
                r["mean_discrepancy"],
                _pct(r["share_at_low"]),
                _pct(r["share_at_high"]),
            )
            for r in result["by_source"]
        ],
        "\n## By source (a row counts under the source of its first segment)",
    )
    by_position = format_table(
        ["positions", "tokens", "mean weight", "mean discrepancy", "at low %", "at high %"],
        [
            (
                f"{r['pos_from']}-{r['pos_to']}",
                r["tokens"],
                r["mean_weight"],
                r["mean_discrepancy"],
                _pct(r["share_at_low"]),
                _pct(r["share_at_high"]),
            )
            for r in result["by_position"]
        ],
        "\n## Weight by position inside the segment",
    )
    return [by_source, by_position]


def _top_sections(result: dict[str, Any]) -> list[str]:
    """The most up- and down-weighted token ids, then documents."""
    k, m = result["settings"]["top_k"], result["settings"]["min_count"]
    parts = []
    for key, title in (("top_up_tokens", "up-weighted"), ("top_down_tokens", "down-weighted")):
        parts.append(
            format_table(
                ["token", "id", "count", "mean weight", "mean discrepancy"],
                [
                    (_shown_token(r), str(r["token_id"]), r["count"], r["mean_weight"], r["mean_discrepancy"])
                    for r in result[key]
                ],
                f"\n## Top {k} {title} token ids (seen >= {m} times)",
            )
        )
    for key, title in (("top_up_documents", "up-weighted"), ("top_down_documents", "down-weighted")):
        parts.append(
            format_table(
                ["document", "segments", "tokens", "scored", "mean weight", "mean discrepancy"],
                [
                    (
                        r["doc_id"],
                        r["segments"],
                        r["tokens"],
                        r["scored_tokens"],
                        r["mean_weight"],
                        r["mean_discrepancy"],
                    )
                    for r in result[key]
                ],
                f"\n## Top {k} {title} documents (>= {m} scored tokens)",
            )
        )
    return parts


def render_text(result: dict[str, Any], note: str = "") -> str:
    """The statistics as text: a header, then one table per section."""
    s = result["summary"]
    parts = [
        f"remit stats: {result['output']}",
        f"run {s['run_id']}  eps {s['eps']}  centre {s['center']}",
        "All weight and discrepancy statistics are over scored tokens (those with a log-prob).",
    ]
    if note:
        parts.append(note)
    parts += _summary_sections(result)
    parts.append(_histogram_section(result))
    parts += _breakdown_sections(result)
    parts += _top_sections(result)
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------
# Command


def run(args: argparse.Namespace) -> int:
    return run_with_duckdb("stats", lambda: _print_stats(args))


def _print_stats(args: argparse.Namespace) -> int:
    from remit.shards.manifest import read_manifest
    from remit.shards.views import check_output

    note = pack_only_note(check_output(args.output))
    if note is not None:
        if args.json:
            manifest = read_manifest(args.output)
            summary = {"output": str(args.output), "scored": False, "rows": manifest.total_rows}
            json.dump({**summary, "tokens": manifest.total_tokens, "note": note}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(note)
        return 0

    result = collect(
        args.output,
        top_k=args.top_k,
        min_count=args.min_count,
        bins=args.bins,
        memory_limit=args.memory_limit,
        threads=args.threads,
    )
    root = Path(result["output"])
    tokenizer, note = load_tokenizer(read_manifest(root).data, root, args.tokenizer)
    decode_top_tokens(result, tokenizer)
    if args.json:
        result["tokens_note"] = note
        json.dump(_finite(result), sys.stdout, indent=2, allow_nan=False, default=_json_default)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(result, note))
    return 0


def _finite(value: Any) -> Any:
    """NaN and infinities become null, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    # DuckDB returns DECIMAL results (e.g. divisions of integer sums) as decimal.Decimal.
    return float(value)
