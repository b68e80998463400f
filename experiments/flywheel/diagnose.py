"""Where the annotation put its weights: mean ReMiT weight and log-prob discrepancy per kind of token.

ReMiT helps when the RL model is more confident than the base on the tokens that matter and less
confident on the wrong ones. This reads the annotated shards back per document (segments joined in
document order), maps the tokens back to the text, and sorts every scored token of the annealing split
into: text documents; question; operands; results of correct equations; the result of the wrong
equation of a noisy solution; results carried on after a wrong step; the final answer when right or
wrong; other solution tokens. It runs before the mid-training arms (stage `diagnose`), so that the
noise rate and eps can be judged without any evaluation split.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from experiments.flywheel.data import read_jsonl
from remit.common.atomic import write_json_atomic

_EQ = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)\.")


def _documents(annotated: Path) -> dict[str, dict[str, list]]:
    """doc id -> {"offset": [...], "tokens": [...], "weight": [...], "d": [...]} gathered from every segment."""
    from remit.shards import open_output

    docs: dict[str, dict[str, list]] = defaultdict(lambda: {"parts": []})
    for table in open_output(annotated).iter_tables():
        lengths = table.column("n_tokens").to_numpy()
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        tok = pc.list_flatten(table.column("token_ids")).to_numpy()
        w = pc.list_flatten(table.column("weight")).to_numpy()
        d = pc.list_flatten(table.column("logp_rl")).to_numpy() - pc.list_flatten(table.column("logp_base")).to_numpy()
        starts = table.column("segment_starts").to_pylist()
        ids = table.column("segment_doc_ids").to_pylist()
        doc_off = table.column("segment_doc_offsets").to_pylist()
        for r in range(table.num_rows):
            bounds = [*starts[r], int(lengths[r])]
            for k, doc in enumerate(ids[r]):
                a, b = offsets[r] + bounds[k], offsets[r] + bounds[k + 1]
                docs[doc]["parts"].append((doc_off[r][k], tok[a:b], w[a:b], d[a:b]))
    out = {}
    for doc, v in docs.items():
        parts = sorted(v["parts"], key=lambda p: p[0])
        out[doc] = {
            "tokens": np.concatenate([p[1] for p in parts]),
            "weight": np.concatenate([p[2] for p in parts]),
            "d": np.concatenate([p[3] for p in parts]),
        }
    return out


def _char_spans(text: str, noise: str) -> list[tuple[int, int, str]]:
    """(start, end, category) character spans of one annealing document's text."""
    cut = text.find("\nAnswer:")
    spans = [(0, cut, "question")]
    sol_start = cut + len("\nAnswer:")
    sol = text[sol_start:]
    wrong_seen = False
    for m in _EQ.finditer(sol):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        right = (a + b if op == "+" else a - b) == c
        for g in (1, 3):
            spans.append((sol_start + m.start(g), sol_start + m.end(g), "operands"))
        if not right:
            cat = "result, wrong step"
            wrong_seen = True
        else:
            cat = "result, correct step after a wrong one" if wrong_seen else "result, correct step"
        spans.append((sol_start + m.start(4), sol_start + m.end(4), cat))
    final = re.search(r"The answer is (\d+)\.", sol)
    if final:
        cat = {"answer": "final answer, wrong number", "step": "final answer after a wrong step"}.get(
            noise, "final answer, right"
        )
        spans.append((sol_start + final.start(1), sol_start + final.end(1), cat))
    return spans


def weight_by_token_kind(out: Path, annotated: str = "annotated", split: str = "anneal") -> dict[str, dict[str, float]]:
    """The table for the annotation `out/annotated` of the annealing file `out/data/split.jsonl`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    rows = {r["id"]: r for r in read_jsonl(out / "data" / f"{split}.jsonl")}
    acc: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for doc_id, v in _documents(out / annotated).items():
        row = rows.get(doc_id)
        if row is None:
            continue
        ids = v["tokens"]
        scored = ~np.isnan(v["d"])
        if row["kind"] == "text":
            for w, d in zip(v["weight"][scored], v["d"][scored]):
                acc["text documents"].append((float(w), float(d)))
            continue
        text = row["text"]
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        n = min(len(enc["input_ids"]), len(ids))  # the stored tokens add EOS at the end
        spans = _char_spans(text, row["noise"])
        for i in range(n):
            if not scored[i]:
                continue
            s, e = enc["offset_mapping"][i]
            cat = "other solution tokens"
            for a, b, c in spans:
                if a <= s and e <= b and e > s:
                    cat = c
                    break
            if cat == "other solution tokens" and e <= text.find("\nAnswer:"):
                cat = "question"
            acc[cat].append((float(v["weight"][i]), float(v["d"][i])))
    table = {}
    for cat, vals in sorted(acc.items()):
        pairs = np.asarray(vals)
        table[cat] = {
            "tokens": len(pairs),
            "mean_weight": float(pairs[:, 0].mean()),
            "share_at_0.8": float((pairs[:, 0] <= 0.8 + 1e-6).mean()),
            "share_at_1.2": float((pairs[:, 0] >= 1.2 - 1e-6).mean()),
            "mean_logp_rl_minus_base": float(pairs[:, 1].mean()),
        }
    return table


def markdown(table: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| token kind (annealing split) | tokens | mean weight | at 0.8 | at 1.2 | mean log p_RL - log p_base |",
        "|---|---|---|---|---|---|",
    ]
    for cat, r in table.items():
        lines.append(
            f"| {cat} | {r['tokens']:,} | {r['mean_weight']:.3f} | {100 * r['share_at_0.8']:.1f}% | "
            f"{100 * r['share_at_1.2']:.1f}% | {r['mean_logp_rl_minus_base']:+.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1])
    t = weight_by_token_kind(out)
    write_json_atomic(out / "weights_by_token_kind.json", t)
    print(markdown(t))
