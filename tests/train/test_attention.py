"""Document-masked attention: the sdpa path against an independent per-document reference and against
the dense mcore path (forward and gradients), leak tests that fail when a token sees another document,
and the Transformer Engine path (GPU only)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.train.tiny_models import make_tiny, packed_batch

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# Rows of documents: lengths 1 and 2, several per length bucket, documents longer than the windows,
# and a padded last row (segment id -1).
ROWS = [[13, 1, 20, 14], [30, 9, 2, 7], [5, 22]]
S = 48


def _segments(rows: list[list[int]], s: int) -> torch.Tensor:
    return packed_batch(rows, pad_to=s)["segment_ids"]


def _reference(q, k, v, segment_ids, window, scale):
    """Each document on its own, float64, an explicit masked softmax: [S, b, nh, d] -> [S, b, nh*d]."""
    s, b, nh, d = q.shape
    rep = nh // k.shape[2]
    out = torch.zeros(s, b, nh, d, dtype=torch.float64)
    for r in range(b):
        seg = segment_ids[r].tolist()
        starts = [i for i in range(s) if i == 0 or seg[i] != seg[i - 1]] + [s]
        for a, e in zip(starts[:-1], starts[1:]):
            qd = q[a:e, r].double().transpose(0, 1)  # [nh, n, d]
            kd = k[a:e, r].double().repeat_interleave(rep, 1).transpose(0, 1)
            vd = v[a:e, r].double().repeat_interleave(rep, 1).transpose(0, 1)
            scores = qd @ kd.transpose(1, 2) * scale
            i = torch.arange(e - a)
            allowed = i[:, None] >= i[None, :]
            if window is not None:
                allowed &= i[:, None] - i[None, :] < window
            scores = scores.masked_fill(~allowed, -math.inf)
            out[a:e, r] = (scores.softmax(-1) @ vd).transpose(0, 1)
    return out.reshape(s, b, nh * d)


@pytest.mark.parametrize("window", [None, 1, 4, 7, 64])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_sdpa_document_attention_equals_a_per_document_reference(window, heads):
    from remit.train.attention import document_attention

    nh, ng = heads
    g = torch.Generator().manual_seed(0)
    seg = _segments(ROWS, S)
    q = torch.randn(S, len(ROWS), nh, 16, generator=g, requires_grad=True)
    k = torch.randn(S, len(ROWS), ng, 16, generator=g, requires_grad=True)
    v = torch.randn(S, len(ROWS), ng, 16, generator=g, requires_grad=True)
    got = document_attention(q, k, v, seg, window=window, scale=0.3)
    ref = _reference(q, k, v, seg, window, 0.3)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
    # gradients against the reference's
    w = torch.randn(got.shape, generator=g)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_sdpa_document_attention_runs_in_bf16(window):
    """bf16 (the GPU training dtype) through the same kernels: forward and backward, close to the
    float64 reference within bf16 precision."""
    from remit.train.attention import document_attention

    g = torch.Generator().manual_seed(1)
    seg = _segments(ROWS, S)
    q, k, v = (torch.randn(S, len(ROWS), h, 16, generator=g) for h in (4, 2, 2))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    got = document_attention(qb, kb, vb, seg, window=window)
    assert got.dtype == torch.bfloat16
    got.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad.float()).all() for t in (qb, kb, vb))
    ref = _reference(qb.detach().float(), kb.detach().float(), vb.detach().float(), seg, window, 0.25)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=3e-2)


def test_dense_mask_matches_the_definition():
    from remit.train.attention import dense_document_mask

    seg = _segments([[3, 4, 2]], 10)  # one padding token at the end
    m = dense_document_mask(seg, window=2)[0, 0]
    for i in range(10):
        for j in range(10):
            same = seg[0, i] == seg[0, j]
            assert bool(m[i, j]) == (not (same and 0 <= i - j < 2)), (i, j)


def test_segment_runs_are_documents():
    """A document is a run of equal segment ids: the padding run (-1) is one more document."""
    from remit.train.attention import document_lengths

    assert document_lengths(_segments([[3, 4, 2], [9]], 10)).tolist() == [3, 4, 2, 1, 9, 1]


# --- the whole model: sdpa against the dense reference -------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("att")
    # llama3.1: full attention; mistral: window 7 on every layer; qwen2-window: window 6 on layer 1 only.
    return {name: make_tiny(name, root / name, seed=5) for name in ("llama3.1", "mistral", "qwen2-window")}


def _model(hf_dir, attention, bf16: bool = False):
    from remit.train.architecture import read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    arch = read_architecture(hf_dir)
    model = build_gpt_model(arch, transformer_config(arch, attention=attention, bf16=bf16), S, attention)
    load_hf_into(model, hf_dir, arch, 0, 1)
    return model


def _loss_and_grads(model, batch, attention):
    from remit.train.model import forward_tokens

    model.zero_grad()
    per_token = forward_tokens(model, batch, attention)
    (per_token * batch["weight"]).sum().backward()
    return per_token.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.megatron
@pytest.mark.parametrize("name", ["llama3.1", "mistral", "qwen2-window"])
def test_sdpa_equals_dense_forward_and_backward(mcore, models, name):
    batch = packed_batch(ROWS, seed=7, pad_to=S)
    batch["labels"] = torch.roll(batch["tokens"], -1, 1)
    batch["weight"] = torch.rand(batch["tokens"].shape, generator=torch.Generator().manual_seed(8))
    loss_d, grads_d = _loss_and_grads(_model(models[name], "dense"), batch, "dense")
    loss_s, grads_s = _loss_and_grads(_model(models[name], "sdpa"), batch, "sdpa")
    torch.testing.assert_close(loss_s, loss_d, rtol=0, atol=1e-5)
    assert set(grads_s) == set(grads_d)
    for n in grads_d:
        scale = max(1.0, grads_d[n].abs().max().item())
        torch.testing.assert_close(grads_s[n] / scale, grads_d[n] / scale, rtol=0, atol=1e-5, msg=n)
    assert any(g.abs().max() > 1e-3 for g in grads_d.values())


# --- leak tests ----------------------------------------------------------------------------------------


def _leak(run, batch, changed: tuple[int, int, int]) -> float:
    """Largest change of any *other* document's logits when document `changed` (row, start, length) gets
    new tokens. 0 when attention stays inside documents."""
    r, start, n = changed
    other = dict(batch)
    other["tokens"] = batch["tokens"].clone()
    other["tokens"][r, start : start + n] = (batch["tokens"][r, start : start + n] + 17) % 300 + 3
    a, b = run(batch), run(other)
    keep = torch.ones(a.shape[:2], dtype=torch.bool)
    keep[r, start : start + n] = False
    return (a - b)[keep].abs().max().item()


def _leak_check(run, batch, tol: float = 1e-6) -> None:
    # Change the first document of row 0: every later document of that row would see it on a leak.
    changed = batch["docs"][0]
    leak = _leak(run, batch, changed)
    assert leak <= tol, f"a change in document {changed} moved other documents' logits by {leak}"


@pytest.mark.megatron
@pytest.mark.parametrize("attention", ["sdpa", "dense"])
def test_no_token_attends_across_a_document_boundary(mcore, models, attention):
    from remit.train.model import forward_tokens

    model = _model(models["mistral"], attention).eval()
    batch = packed_batch(ROWS, seed=9, pad_to=S)

    def run(b):
        with torch.no_grad():
            return forward_tokens(model, b, attention)

    _leak_check(run, batch)
    # The check can fail: with one document per row (a plain causal mask) the same change leaks.
    leaky = dict(batch, segment_ids=torch.zeros_like(batch["segment_ids"]))
    with pytest.raises(AssertionError, match="moved other documents"):
        _leak_check(run, leaky)


# --- Transformer Engine (GPU only) ---------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.megatron
def test_te_packed_attention_equals_sdpa_and_does_not_leak(mcore, models):
    """TE's layer spec with THD packed sequences, in bf16 (TE's packed kernels need 16-bit inputs): the
    logits of sdpa in bf16, and no leak across documents (Megatron-LM issue #2357: with
    attn_mask_type=causal an explicit mask is silently ignored, so a mask-based TE path would leak)."""
    pytest.importorskip("transformer_engine")
    from remit.train.model import forward_tokens

    batch = packed_batch(ROWS, seed=10, pad_to=S)
    batch = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    for name in ("llama3.1", "mistral", "qwen2-window"):
        te = _model(models[name], "te", bf16=True).cuda().eval()
        ref = _model(models[name], "sdpa", bf16=True).cuda().eval()

        def run(b, model=te):
            with torch.no_grad():
                return forward_tokens(model, b, "te").float().cpu()

        with torch.no_grad():
            expected = forward_tokens(ref, batch, "sdpa").float().cpu()
        got = run(batch)
        scale = expected.abs().max().item()
        assert (got - expected).abs().max().item() <= 0.03 * scale, name
        # bf16 rounding can differ between batch compositions; a leak moves logits by far more.
        _leak_check(run, batch, tol=1e-2 * scale)


def test_segment_ids_changed_in_place_are_seen():
    """The document plan is computed once per micro-batch and reused by every layer; segment ids written
    in place between two calls (same tensor object) must not be served the old plan."""
    from remit.train.attention import document_attention

    g = torch.Generator().manual_seed(2)
    seg = _segments(ROWS, S)
    q, k, v = (torch.randn(S, len(ROWS), h, 16, generator=g) for h in (4, 2, 2))
    document_attention(q, k, v, seg, scale=0.25)
    seg[:, : S // 2] = 5  # one long document in front of each row
    got = document_attention(q, k, v, seg, scale=0.25)
    torch.testing.assert_close(got.double(), _reference(q, k, v, seg, None, 0.25), rtol=0, atol=1e-5)


def test_document_attention_runs_under_inference_mode():
    """Inference tensors carry no version counter; the plan is then made per call."""
    from remit.train.attention import document_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(S, len(ROWS), h, 16, generator=g) for h in (4, 2, 2))
    with torch.inference_mode():
        seg = _segments(ROWS, S).clone()
        first = document_attention(q, k, v, seg, window=4, scale=0.25)
        seg[:, : S // 2] = 5
        second = document_attention(q, k, v, seg, window=4, scale=0.25)
    torch.testing.assert_close(first.double(), _reference(q, k, v, _segments(ROWS, S), 4, 0.25), rtol=0, atol=1e-5)
    torch.testing.assert_close(second.double(), _reference(q, k, v, seg, 4, 0.25), rtol=0, atol=1e-5)


# --- choosing the backend ------------------------------------------------------------------------------


def test_auto_means_sdpa_even_where_transformer_engine_runs(monkeypatch):
    from remit.train import attention

    monkeypatch.setattr(attention, "te_available", lambda: True)
    assert attention.resolve_backend("auto") == "sdpa"
    assert attention.resolve_backend("te") == "te"  # by name only


def test_te_by_name_without_transformer_engine_is_one_line(monkeypatch):
    from remit.train import attention

    monkeypatch.setattr(attention, "te_available", lambda: False)
    with pytest.raises(ValueError, match=r"^attention: 'te' needs Transformer Engine.*use --attention sdpa"):
        attention.resolve_backend("te")


def test_te_carries_a_note_until_verified_on_a_card(monkeypatch):
    from remit.train import attention

    monkeypatch.setattr(attention, "TE_VERIFIED_ON", None)
    note = attention.backend_note("te")
    assert note is not None and "not been verified on a GPU" in note and "\n" not in note
    assert attention.backend_note("sdpa") is None
    monkeypatch.setattr(attention, "TE_VERIFIED_ON", "NVIDIA H100 80GB HBM3")
    assert attention.backend_note("te") is None


def test_te_with_pipeline_stages_needs_one_sequence_per_micro_batch(tmp_path):
    from remit.train.config import TrainConfig

    base = {"data": "d", "init_hf": "m", "save": tmp_path, "attention": "te", "pipeline_model_parallel_size": 2}
    with pytest.raises(ValueError, match=r"^attention: te packs a micro-batch.*--micro-batch-size 1"):
        TrainConfig(**base, micro_batch_size=2)
    assert TrainConfig(**base, micro_batch_size=1).attention == "te"
    assert TrainConfig(**{**base, "attention": "sdpa"}, micro_batch_size=2).micro_batch_size == 2


@pytest.mark.megatron
def test_rope_fusion_follows_transformer_engine(monkeypatch):
    """te asks Megatron for TE's fused RoPE exactly where the installed TE provides it; the local backends never."""
    pytest.importorskip("megatron.core")
    from megatron.core.models.common.embeddings import rope_utils

    from remit.train import attention

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", None, raising=False)
    assert not attention.rope_fusion_available()
    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb_thd", lambda *a, **k: None)
    assert attention.rope_fusion_available()
