"""Prompts and the slow reference the engines are checked against (a full forward pass per prompt)."""

from __future__ import annotations

import numpy as np

MAX_LEN = 512
#: Prompt lengths: empty, one token (nothing to score), short, a chunk boundary, and max_model_len itself.
LENGTHS = (37, 1, 2, 0, 300, 257, 511, MAX_LEN, 64)
TOLERANCE = 1e-3  # fp32; measured differences are ~1e-6


def make_prompts(vocab: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, n).astype(np.int32) for n in LENGTHS]


def naive_logprobs(model, prompt: np.ndarray) -> np.ndarray:
    """Full forward, full-vocabulary log-softmax, gather: the slow reference."""
    import torch

    out = np.full(len(prompt), np.nan, np.float32)
    if len(prompt) < 2:
        return out
    with torch.no_grad():
        ids = torch.from_numpy(prompt.astype(np.int64))[None].to(model.device)
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    out[1:] = logp[:-1].gather(-1, ids[0, 1:, None])[:, 0].cpu().numpy()
    return out


def assert_scores_match(got: list[np.ndarray], want: list[np.ndarray], tol: float) -> float:
    assert len(got) == len(want)
    worst = 0.0
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        if len(g):
            assert np.isnan(g[0])
        assert np.array_equal(np.isnan(g), np.isnan(w))
        if len(g) > 1:
            worst = max(worst, float(np.max(np.abs(g[1:] - w[1:]))))
    assert worst <= tol, f"max |difference| {worst} > {tol}"
    return worst
