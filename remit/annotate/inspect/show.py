"""`remit-annotate show OUTPUT -o PAGE.html`: one self-contained HTML page of tokens coloured by weight.

- Chosen rows as text, each token's background coloured by its weight (blue below 1, white at 1, red
  above; a tooltip gives the token, both log-probs and the weight).
- The distribution plots as embedded PNG images, and the run's manifest as a table.
- Nothing is loaded from the network (no scripts, fonts or CDN): the page opens offline.
- Every text that comes from the data (token texts, document ids, sources, manifest values, the folder's
  path) goes through `html.escape`, with control characters shown as visible marks: a document that
  contains markup (``</script>``, ``<!--``) shows as text. The page holds no script element at all.
- `-o` writes only a page of its own: it refuses a target inside an annotation output folder and an
  existing file without `PAGE_MARKER`.
- `--doc ID` shows every document that carries ID, each apart, with where it starts (ids may repeat).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remit.annotate.inspect.guard import pack_only_note, require_weights, run_with_duckdb
from remit.annotate.inspect.tokens import load_tokenizer, token_texts
from remit.common.atomic import write_text_atomic
from remit.shards.manifest import is_output_folder

DEFAULT_ROWS = 5
#: Every page `show` writes carries this tag; `-o` overwrites an existing file only when it carries it.
PAGE_MARKER = '<meta name="generator" content="remit-annotate show">'
PLOT_SAMPLE_TOKENS = 50_000
#: Colour at weight 1 - eps and at 1 + eps; in between, a straight blend with white. Light enough that
#: black text stays readable on the strongest colour.
BLUE = (96, 150, 255)
RED = (255, 96, 80)
WHITE = (255, 255, 255)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="annotation output folder (manifest.json + shard-*.parquet)")
    parser.add_argument("-o", "--html", type=Path, required=True, metavar="PAGE.html", help="page to write")
    # --- which rows ---
    g = parser.add_argument_group("rows to show (one of; default: --random 5)")
    pick = g.add_mutually_exclusive_group()
    pick.add_argument("--random", type=int, metavar="N", default=None, help="N rows chosen at random with --seed")
    pick.add_argument(
        "--top",
        type=int,
        metavar="N",
        default=None,
        help="the N rows with the highest mean weight (among rows with at least half the "
        "largest scored-token count, so a short last row cannot win)",
    )
    pick.add_argument(
        "--doc", action="append", metavar="ID", default=None, help="every segment of document ID, in order (repeatable)"
    )
    g.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed for --random and the plot's token sample (default 0)"
    )
    # --- rendering ---
    g = parser.add_argument_group("rendering")
    g.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="DIR",
        help="tokenizer folder for token texts (default: the manifest's tokenizer path; none: raw ids)",
    )
    g.add_argument(
        "--plot-tokens",
        type=int,
        default=PLOT_SAMPLE_TOKENS,
        metavar="N",
        help=f"scored tokens sampled for the discrepancy-against-weight plot (default {PLOT_SAMPLE_TOKENS})",
    )
    g.add_argument(
        "--memory-limit", default=None, metavar="SIZE", help="DuckDB memory limit, e.g. 2GB (default: DuckDB's)"
    )
    g.add_argument("--threads", type=int, default=None, metavar="N", help="DuckDB threads (default: all cores)")


# ----------------------------------------------------------------------------------------------------
# Choosing and reading rows


@dataclass
class Segment:
    """The part of one document inside one row, with its tokens and their scores."""

    sample_id: int
    doc_id: str
    doc_offset: int
    source: str | None  # the row's source, kept on its first segment only (other segments' is unknown)
    token_ids: list[int]
    logp_base: list[float]
    logp_rl: list[float]
    weight: list[float]
    row_offset: int = 0  # where the segment starts inside its row


@dataclass
class Item:
    """One block of the page: a whole row (random, top) or one document (--doc)."""

    title: str
    segments: list[Segment]


def random_sample_ids(shards: Sequence[dict[str, Any]], n: int, seed: int) -> list[int]:
    """`n` sample ids drawn uniformly without replacement, from the manifest's shard list (no scan)."""
    import numpy as np

    total = sum(int(s["rows"]) for s in shards)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    ids, start = [], 0
    for s in sorted(shards, key=lambda s: s["first_sample_id"]):
        rows = int(s["rows"])
        for p in picks[(picks >= start) & (picks < start + rows)]:
            ids.append(int(s["first_sample_id"]) + int(p - start))
        start += rows
    return ids


def top_sample_ids(con: Any, n: int) -> list[int]:
    # Reads the summary columns only; the token lists are fetched for the chosen rows alone.
    return [
        r[0]
        for r in con.execute(
            "SELECT sample_id FROM remit_rows "
            "WHERE n_scored >= (SELECT max(n_scored) FROM remit_rows) / 2 "
            "ORDER BY mean_weight DESC, sample_id LIMIT ?",
            [n],
        ).fetchall()
    ]


def doc_sample_ids(con: Any, doc_id: str) -> list[int]:
    return [
        r[0]
        for r in con.execute(
            "SELECT sample_id FROM remit_rows WHERE list_contains(segment_doc_ids, ?) ORDER BY sample_id", [doc_id]
        ).fetchall()
    ]


def read_segments(con: Any, sample_ids: Sequence[int]) -> dict[int, list[Segment]]:
    """sample id -> its segments, for the given rows only."""
    if not sample_ids:
        return {}
    rows = con.execute(
        "SELECT sample_id, source, token_ids, logp_base, logp_rl, weight, segment_starts, segment_doc_ids, "
        "segment_doc_offsets FROM remit_rows WHERE sample_id IN (SELECT unnest(?::BIGINT[])) ORDER BY sample_id",
        [list(sample_ids)],
    ).fetchall()
    out: dict[int, list[Segment]] = {}
    for sid, source, tok, lb, lr, w, starts, docs, offsets in rows:
        ends = [*starts[1:], len(tok)]
        out[sid] = [
            Segment(sid, d, off, source if a == 0 else None, tok[a:b], lb[a:b], lr[a:b], w[a:b], a)
            for a, b, d, off in zip(starts, ends, docs, offsets)
        ]
    return out


def documents_with_id(con: Any, doc_id: str) -> list[list[Segment]]:
    """Every document whose id is `doc_id`, in corpus order, each as its segments. Ids need not be unique
    (a corpus may repeat one): a segment at document offset 0 starts a new document, any other continues
    the one before it, so two documents that share an id are kept apart."""
    rows = read_segments(con, doc_sample_ids(con, doc_id))
    documents: list[list[Segment]] = []
    for sid in sorted(rows):
        for seg in rows[sid]:
            if seg.doc_id != doc_id:
                continue
            if seg.doc_offset == 0 or not documents:
                documents.append([seg])
            else:
                documents[-1].append(seg)
    return documents


def where_document(segments: list[Segment]) -> str:
    """Where a document starts: its row, the token in the row, and its input file where the shards record it
    (a row records the input file of its first segment only)."""
    first = segments[0]
    source = f", from {first.source}" if first.source is not None else ""
    return f"row {first.sample_id} token {first.row_offset}{source}"


def choose_items(con: Any, manifest: dict[str, Any], args: argparse.Namespace) -> tuple[list[Item], str]:
    """The blocks to render and a sentence saying how they were chosen."""
    if args.doc:
        items = []
        shared = []
        for doc in args.doc:
            documents = documents_with_id(con, doc)
            if not documents:
                raise ValueError(
                    f"document id {doc!r} is not in this output (ids are the segment_doc_ids; "
                    "`remit-annotate stats` lists some)"
                )
            if len(documents) == 1:
                items.append(Item(f"document {doc}", documents[0]))
                continue
            shared.append(
                f"{len(documents)} documents have id {doc!r}: "
                + "; ".join(f"#{k} at {where_document(d)}" for k, d in enumerate(documents, 1))
            )
            items += [
                Item(f"document {doc} (#{k} of {len(documents)} with this id, at {where_document(d)})", d)
                for k, d in enumerate(documents, 1)
            ]
        how = f"documents {', '.join(args.doc)}"
        return items, how + (f" ({'; '.join(shared)})" if shared else "")
    if args.top is not None:
        _check_count("--top", args.top)
        ids, how = top_sample_ids(con, args.top), f"the {args.top} rows with the highest mean weight"
    else:
        n = DEFAULT_ROWS if args.random is None else args.random
        _check_count("--random", n)
        ids, how = random_sample_ids(manifest["shards"], n, args.seed), f"{n} random rows (seed {args.seed})"
    segments = read_segments(con, ids)
    return [Item(f"row {sid}", segments[sid]) for sid in ids if sid in segments], how


def _check_count(flag: str, n: int) -> None:
    if n < 1:
        raise ValueError(f"{flag} must be at least 1; got {n}")


# ----------------------------------------------------------------------------------------------------
# HTML


def weight_colour(weight: float, eps: float) -> str:
    """Blue below 1, white at 1, red above; full colour at the clip bounds 1 -/+ eps."""
    if not math.isfinite(weight) or eps <= 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, (weight - 1.0) / eps))
    end = BLUE if t < 0 else RED
    rgb = [round(w + abs(t) * (e - w)) for w, e in zip(WHITE, end)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def visible(text: str) -> str:
    """`text` with the control characters an HTML parser drops or rewrites (NUL, a lone carriage return, form
    feed, ESC, DEL, C1 controls) shown as their Unicode control pictures or as an escape; newline and tab
    stay as they are."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 and ch not in "\n\t":
            out.append(chr(0x2400 + code))
        elif code == 0x7F:
            out.append("\u2421")
        elif 0x80 <= code < 0xA0 or 0xD800 <= code < 0xE000:  # C1 controls, unpaired surrogates
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _esc(value: Any) -> str:
    """Text from the data as HTML text or attribute value: markup escaped, control characters shown."""
    return html.escape(visible(str(value)), quote=True)


def _shown(text: str) -> str:
    # Keep line breaks visible as a mark, and keep the break itself (the container is pre-wrap).
    return re.sub(r"\r?\n", "\u21b5\n", text).replace("\t", "\u21e5\t")


def token_spans(seg: Segment, texts: Sequence[str], eps: float, sep: str = "") -> str:
    """One coloured span per token; `sep` goes between spans (a space between raw ids)."""
    parts = []
    for text, lb, lr, w in zip(texts, seg.logp_base, seg.logp_rl, seg.weight):
        scored = lb is not None and lr is not None and not (math.isnan(lb) or math.isnan(lr))
        tip = (
            f"{text!r}\nlogp_base {lb:.4f}\nlogp_rl {lr:.4f}\nweight {w:.4f}"
            if scored
            else f"{text!r}\nno log-prob (first token of its segment)\nweight {w:.4f}"
        )
        cls = "t" if scored else "t unscored"
        parts.append(
            f'<span class="{cls}" style="background:{weight_colour(w, eps) if scored else "#ffffff"}" '
            f'title="{_esc(tip)}">{_esc(_shown(text))}</span>'
        )
    return sep.join(parts)


def item_html(item: Item, texts: dict[int, list[str]], eps: float, sep: str = "") -> str:
    out = [f'<div class="item"><h3>{_esc(item.title)}</h3>']
    for seg in item.segments:
        scored = [w for w, lb in zip(seg.weight, seg.logp_base) if lb is not None and not math.isnan(lb)]
        mean = sum(scored) / len(scored) if scored else float("nan")
        source = f" &middot; {_esc(seg.source)}" if seg.source is not None else ""
        out.append(
            f'<div class="seg"><div class="meta">document <strong>{_esc(seg.doc_id)}</strong> from token '
            f"{seg.doc_offset} &middot; row {seg.sample_id}{source} &middot; "
            f"{len(seg.token_ids)} tokens, mean weight {mean:.4f}</div>"
            f'<div class="tokens">{token_spans(seg, texts[id(seg)], eps, sep)}</div></div>'
        )
    out.append("</div>")
    return "\n".join(out)


def manifest_rows(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The manifest flattened to (dotted key, value) rows; the shard list is left to its own table."""
    rows: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key in sorted(data):
            if prefix == "" and key == "shards":
                continue
            rows += manifest_rows(data[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            rows += manifest_rows(v, f"{prefix}[{i}]")
    else:
        rows.append((prefix, data if isinstance(data, str) else json.dumps(data)))
    return rows


def manifest_html(manifest: dict[str, Any]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in manifest_rows(manifest))
    shards = manifest.get("shards") or []
    cols = ["file", "rows", "tokens", "first_sample_id", "bytes", "token_checksum", "file_sha256"]
    shard_rows = "".join("<tr>" + "".join(f"<td>{_esc(s.get(c, ''))}</td>" for c in cols) + "</tr>" for s in shards)
    return (
        f'<table class="kv">{body}</table>'
        f'<details><summary>{len(shards)} shards</summary><table class="grid"><tr>'
        + "".join(f"<th>{_esc(c)}</th>" for c in cols)
        + f"</tr>{shard_rows}</table></details>"
    )


def legend_html(eps: float) -> str:
    stops = ", ".join(weight_colour(1 + eps * x / 10, eps) for x in range(-10, 11))
    return (
        f'<div class="legend"><span>weight {1 - eps:g}</span>'
        f'<span class="bar" style="background:linear-gradient(to right, {stops})"></span>'
        f'<span>{1 + eps:g}</span> <span class="note">(white: 1; hover a token for its log-probs; '
        "dotted outline: a segment's first token, which has no log-prob)</span></div>"
    )


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #111; max-width: 80em; }
h1 { font-size: 1.4em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: .3em; }
.item { margin-bottom: 1.5em; } .seg { margin: .5em 0 1em; }
.meta { color: #555; font-size: .85em; margin-bottom: .2em; }
.tokens { font-family: ui-monospace, monospace; font-size: 14px; line-height: 1.7; white-space: pre-wrap;
          word-break: break-word; border: 1px solid #ddd; padding: .5em; }
.t { border-radius: 2px; } .t:hover { outline: 1px solid #000; }
.unscored { outline: 1px dotted #888; }
.legend { display: flex; align-items: center; gap: .5em; font-size: .9em; }
.legend .bar { display: inline-block; width: 16em; height: 1em; border: 1px solid #aaa; }
.legend span { white-space: nowrap; } .legend .note { color: #555; white-space: normal; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
table { border-collapse: collapse; font-size: .85em; } td, th { padding: .15em .6em; text-align: left; }
table.kv th { font-weight: normal; color: #555; } table.kv tr:nth-child(even), table.grid tr:nth-child(even) { background: #f6f6f6; }
td { font-family: ui-monospace, monospace; word-break: break-all; }
"""


def build_page(
    *,
    root: Path,
    manifest: dict[str, Any],
    items: list[Item],
    texts: dict[int, list[str]],
    how: str,
    note: str,
    plots: list[tuple[str, bytes]],
    sep: str = "",
) -> str:
    eps = float(manifest["weights"]["eps"])
    imgs = "\n".join(
        f'<figure><img alt="{_esc(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode("ascii")}"><figcaption>{_esc(title)}</figcaption></figure>'
        for title, png in plots
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{PAGE_MARKER}
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>remit: {_esc(manifest.get("run_id", ""))}</title><style>{CSS}</style></head>
<body>
<h1>Tokens by ReMiT weight</h1>
<p class="meta">output {_esc(root)} &middot; run {_esc(manifest.get("run_id", ""))} &middot; eps {eps:g},
centre {_esc(manifest["weights"].get("center", ""))} &middot; showing {_esc(how)} &middot; {_esc(note)}</p>
<section id="rows"><h2>Rows</h2>
{legend_html(eps)}
{"".join(item_html(it, texts, eps, sep) for it in items) or "<p>No rows.</p>"}
</section>
<section id="plots"><h2>Distributions (scored tokens only)</h2>
{imgs}
</section>
<section id="manifest"><h2>Manifest</h2>
{manifest_html(manifest)}
</section>
</body></html>
"""


# ----------------------------------------------------------------------------------------------------
# Plots


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def make_plots(con: Any, eps: float, sample_tokens: int, seed: int) -> list[tuple[str, bytes]]:
    """The weight histogram, discrepancy against weight (a token sample), and weight by position."""
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    plots = []
    hist = con.execute("SELECT lower, upper, tokens FROM remit_weight_histogram").fetchall()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(
        [h[0] for h in hist],
        [h[2] for h in hist],
        width=[h[1] - h[0] for h in hist],
        align="edge",
        color=[weight_colour((h[0] + h[1]) / 2, eps) for h in hist],
        edgecolor="#555",
        linewidth=0.4,
    )
    ax.set(xlabel="weight", ylabel="scored tokens", title="Weight histogram")
    plots.append(("Weight histogram of all scored tokens; the clip bounds fall in the outer bins", _png(fig)))
    plt.close(fig)

    # A reservoir sample keeps memory fixed whatever the output size.
    sample = con.execute(
        f"SELECT discrepancy, weight FROM remit_tokens USING SAMPLE reservoir({int(sample_tokens)} ROWS) "
        f"REPEATABLE ({int(seed)})"
    ).fetchall()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    if sample:
        d, w = zip(*sample)
        hb = ax.hexbin(d, w, gridsize=60, norm=LogNorm(), cmap="viridis", mincnt=1)
        fig.colorbar(hb, ax=ax, label="tokens")
    ax.set(
        xlabel="discrepancy  logp_rl - logp_base (raw, before centring)",
        ylabel="weight",
        title="Discrepancy against weight",
    )
    plots.append((f"Discrepancy against weight, {len(sample):,} scored tokens sampled at random", _png(fig)))
    plt.close(fig)

    pos = con.execute("SELECT pos_from, pos_to, mean_weight FROM remit_weight_by_position").fetchall()
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([math.sqrt(a * b) for a, b, _ in pos], [m for *_, m in pos], marker="o")
    ax.axhline(1.0, color="#999", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="position inside the segment", ylabel="mean weight", title="Weight by position")
    plots.append(("Mean weight by position inside the segment (powers-of-two buckets)", _png(fig)))
    plt.close(fig)
    return plots


# ----------------------------------------------------------------------------------------------------
# Command


def check_page_target(out: Path) -> None:
    """Refuse an `-o` that would overwrite what `show` did not make: a folder, a file inside an annotation
    output folder, or an existing file that is not a page `show` wrote (it carries `PAGE_MARKER`)."""
    if out.is_dir():
        raise ValueError(
            f"-o {out}: is a folder; give the file name of the page, e.g. -o {shlex.quote(str(out / 'weights.html'))}"
        )
    for folder in Path(os.path.abspath(out)).parents:
        if is_output_folder(folder):
            raise ValueError(
                f"-o {out}: lies inside the annotation output folder {folder}, whose files remit-annotate owns; "
                "write the page outside it, e.g. -o weights.html"
            )
    if out.exists() or out.is_symlink():
        try:
            with open(out, "rb") as f:
                head = f.read(4096)
        except OSError as e:
            raise ValueError(f"-o {out}: exists and cannot be read ({e.strerror}); choose another file name") from None
        if PAGE_MARKER.encode() not in head:
            raise ValueError(
                f"-o {out}: exists and is not a page remit-annotate show wrote; remove it or choose another file name"
            )


def write_page(args: argparse.Namespace) -> Path:
    """Build the page for `args` and write it atomically; returns its path."""
    from remit.shards.manifest import read_manifest
    from remit.shards.views import check_output, connect

    out = Path(args.html)
    check_page_target(out)
    root = check_output(args.output, verify=True)  # no figure from a shard whose data was altered
    note = pack_only_note(root)
    if note is not None:
        raise ValueError(f"{note} The page colours tokens by weight, so there is nothing to show.")
    parsed = read_manifest(root)
    require_weights(parsed, root)
    manifest = parsed.data
    tokenizer, note = load_tokenizer(manifest, root, args.tokenizer)
    con = connect(root, memory_limit=args.memory_limit, threads=args.threads)
    try:
        items, how = choose_items(con, manifest, args)
        # The three plots read the token pass; compute it once.
        con.execute("CREATE OR REPLACE TEMP TABLE remit_token_stats AS FROM remit_token_stats")
        plots = make_plots(con, float(manifest["weights"]["eps"]), max(1, args.plot_tokens), args.seed)
    finally:
        con.close()
    texts: dict[int, list[str]] = {}
    for item in items:
        for seg in item.segments:
            decoded = token_texts(tokenizer, seg.token_ids)
            texts[id(seg)] = [t if t is not None else f"[{i}]" for t, i in zip(decoded, seg.token_ids)]
    # Raw ids need a space between them; decoded texts carry their own spacing.
    page = build_page(
        root=root,
        manifest=manifest,
        items=items,
        texts=texts,
        how=how,
        note=note,
        plots=plots,
        sep=" " if tokenizer is None else "",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return out


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        out = write_page(args)
        print(f"wrote {out} ({out.stat().st_size:,} bytes)")
        return 0

    return run_with_duckdb("show", body)
