"""Slow, independent numpy versions of the statistics the DuckDB views compute, read with pyarrow."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


@dataclass
class Flat:
    """Every token of an output, flattened, plus per-row and per-segment fields."""

    eps: float
    row_source: list[str]
    row_sample_id: np.ndarray
    row_lengths: np.ndarray
    token_ids: np.ndarray
    logp_base: np.ndarray
    logp_rl: np.ndarray
    weight: np.ndarray
    pos_in_segment: np.ndarray  # per token
    seg_doc_ids: list[str]  # per segment, in order
    seg_sample_id: np.ndarray
    seg_tokens: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.logp_base) & ~np.isnan(self.logp_rl)

    @property
    def discrepancy(self) -> np.ndarray:
        return self.logp_rl.astype(np.float64) - self.logp_base.astype(np.float64)


def load(root: Path, eps: float) -> Flat:
    tables = [pq.read_table(p) for p in sorted(Path(root).glob("*.parquet"))]
    cols: dict[str, list] = defaultdict(list)
    pos, seg_doc, seg_sid, seg_tok = [], [], [], []
    for t in tables:
        for name in ("token_ids", "logp_base", "logp_rl", "weight"):
            cols[name].append(pc.list_flatten(t.column(name)).to_numpy())
        cols["n_tokens"].append(t.column("n_tokens").to_numpy())
        cols["sample_id"].append(t.column("sample_id").to_numpy())
        cols["source"] += t.column("source").to_pylist()
        for sid, n, starts, docs in zip(
            t.column("sample_id").to_pylist(),
            t.column("n_tokens").to_pylist(),
            t.column("segment_starts").to_pylist(),
            t.column("segment_doc_ids").to_pylist(),
        ):
            ends = [*starts[1:], n]
            for s, e, d in zip(starts, ends, docs):
                pos.append(np.arange(e - s))
                seg_doc.append(d)
                seg_sid.append(sid)
                seg_tok.append(e - s)
    return Flat(
        eps=eps,
        row_source=cols["source"],
        row_sample_id=np.concatenate(cols["sample_id"]),
        row_lengths=np.concatenate(cols["n_tokens"]).astype(np.int64),
        token_ids=np.concatenate(cols["token_ids"]).astype(np.int64),
        logp_base=np.concatenate(cols["logp_base"]),
        logp_rl=np.concatenate(cols["logp_rl"]),
        weight=np.concatenate(cols["weight"]),
        pos_in_segment=np.concatenate(pos),
        seg_doc_ids=seg_doc,
        seg_sample_id=np.array(seg_sid),
        seg_tokens=np.array(seg_tok),
    )


def grid_quantile(values: np.ndarray, step: float, q: float) -> float:
    """numpy's inverted-CDF quantile of the values rounded to multiples of `step`."""
    return float(np.quantile(np.round(values / step) * step, q, method="inverted_cdf"))


def histogram(f: Flat, bins: int) -> np.ndarray:
    w = f.weight[f.scored].astype(np.float64)
    lo, width = 1 - f.eps, 2 * f.eps / bins
    idx = np.clip(np.floor((w - lo) / width), 0, bins - 1).astype(np.int64)
    return np.bincount(idx, minlength=bins)


def at_bounds(f: Flat) -> tuple[np.ndarray, np.ndarray]:
    """Per token: at the low clip bound, at the high one (float32 comparison, as the writer does)."""
    return f.weight <= np.float32(1 - f.eps), f.weight >= np.float32(1 + f.eps)


def per_document(f: Flat) -> dict[str, dict]:
    """doc id -> segments, tokens, scored tokens, mean weight, mean discrepancy (from the tokens)."""
    seg_of_token = np.repeat(np.arange(len(f.seg_tokens)), f.seg_tokens)
    scored = f.scored
    d = np.where(scored, f.discrepancy, 0.0)
    out: dict[str, dict] = {}
    n_seg = len(f.seg_tokens)
    seg_scored = np.bincount(seg_of_token[scored], minlength=n_seg)
    seg_w = np.bincount(seg_of_token[scored], weights=f.weight[scored].astype(np.float64), minlength=n_seg)
    seg_d = np.bincount(seg_of_token, weights=d, minlength=n_seg)
    for i, doc in enumerate(f.seg_doc_ids):
        e = out.setdefault(doc, {"segments": 0, "tokens": 0, "scored": 0, "sw": 0.0, "sd": 0.0})
        e["segments"] += 1
        e["tokens"] += int(f.seg_tokens[i])
        e["scored"] += int(seg_scored[i])
        e["sw"] += seg_w[i]
        e["sd"] += seg_d[i]
    for e in out.values():
        e["mean_weight"] = e["sw"] / e["scored"] if e["scored"] else None
        e["mean_discrepancy"] = e["sd"] / e["scored"] if e["scored"] else None
    return out


def per_token(f: Flat) -> dict[int, tuple[int, float, float]]:
    """token id -> (count, mean weight, mean discrepancy) over scored positions."""
    s = f.scored
    ids, w, d = f.token_ids[s], f.weight[s].astype(np.float64), f.discrepancy[s]
    uniq, inv = np.unique(ids, return_inverse=True)
    n = np.bincount(inv)
    mw = np.bincount(inv, weights=w) / n
    md = np.bincount(inv, weights=d) / n
    return {int(u): (int(c), float(a), float(b)) for u, c, a, b in zip(uniq, n, mw, md)}
