"""Megatron-Core in this process: HF <-> mcore conversion, and the training context = scoring context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.megatron,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _dev() -> torch.device:
    from remit.train import cpu_compat

    return cpu_compat.device()


class _OnDevice(torch.nn.Module):
    """Runs the model on the training device (a GPU where there is one) with CPU inputs and outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.to(_dev())

    def forward(self, *args, **kwargs):
        move = lambda t: t.to(_dev()) if isinstance(t, torch.Tensor) else t  # noqa: E731
        out = self.model(*map(move, args), **{k: move(v) for k, v in kwargs.items()})
        return out.float().cpu()


def _mcore_model(hf_dir, seq_len=64):
    from remit.train.architecture import read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    shape = read_architecture(hf_dir)
    model = build_gpt_model(shape, transformer_config(shape), seq_len)
    load_hf_into(model, hf_dir, shape, 0, 1)
    return model.eval(), shape


def _one_document(b: int, s: int) -> torch.Tensor:
    """Segment ids of rows that hold one document each (plain causal attention)."""
    return torch.zeros(b, s, dtype=torch.long)


def test_hf_to_mcore_and_back_reproduces_the_logits(mcore, model_pair, tmp_path):
    from transformers import LlamaForCausalLM

    from remit.train.convert import gather_full_state, read_hf_weights, save_hf

    base_dir, _ = model_pair
    model, shape = _mcore_model(base_dir)
    hf = LlamaForCausalLM.from_pretrained(base_dir).eval()
    ids = torch.randint(3, shape.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(24)[None].expand(2, 24)
    with torch.no_grad():
        ref = hf(ids).logits
        got = _OnDevice(model)(ids, pos, _one_document(2, 24))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)

    out = save_hf(gather_full_state(model, None), base_dir, tmp_path / "back")
    original, back = read_hf_weights(base_dir), read_hf_weights(out)
    assert set(original) == set(back)
    for name in original:
        torch.testing.assert_close(back[name], original[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(LlamaForCausalLM.from_pretrained(out).eval()(ids).logits, ref, rtol=0, atol=0)


def test_tied_embeddings_convert(mcore, tmp_path):
    from remit.annotate.demo import tiny_llama
    from remit.train.convert import gather_full_state, read_hf_weights, save_hf

    d = tmp_path / "tied"
    tiny_llama(96, seed=3, tie=True, hidden=64, heads=4, kv_heads=1, ffn=96).save_pretrained(d)
    model, shape = _mcore_model(d)
    assert shape.tie_embeddings and not any(n.startswith("output_layer") for n, _ in model.named_parameters())
    from transformers import LlamaForCausalLM

    ids = torch.randint(3, 96, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(
            _OnDevice(model)(ids, torch.arange(16)[None], _one_document(1, 16)),
            LlamaForCausalLM.from_pretrained(d)(ids).logits,
            rtol=0,
            atol=1e-5,
        )
    back = read_hf_weights(save_hf(gather_full_state(model, None), d, tmp_path / "back"))
    assert "lm_head.weight" not in back and set(back) == set(read_hf_weights(d)) - {"lm_head.weight"}


def test_tp_slices_reassemble():
    from remit.train.convert import tp_slice

    full = torch.arange(8 * 3).reshape(8, 3)
    for name, dim in [("x.linear_qkv.weight", 0), ("x.linear_proj.weight", 1)]:
        parts = [tp_slice(name, full, r, 2) for r in range(2)]
        assert torch.equal(torch.cat(parts, dim), full)
    parts = [tp_slice("mlp.linear_fc1.weight", full, r, 2) for r in range(2)]
    gate = torch.cat([p.chunk(2)[0] for p in parts])
    assert torch.equal(gate, full[:4])  # each rank holds its share of gate and of up


@pytest.mark.parametrize("center", ["row", "segment"])
def test_online_with_the_base_model_reproduces_static(mcore, model_pair, tmp_path, center):
    """The packed, document-masked training forward sees each segment exactly as the scorer did, so
    the current model's log-probs equal the stored base log-probs, and the online weights the static ones."""
    from remit.train.dataset import RemitDataset, collate
    from remit.train.loader import to_device
    from remit.train.loss import group_index, online_weights, remit_loss, summarize
    from remit.train.preflight import tokenizer_sha256
    from tests.train.scored import make_scored_output

    base_dir, rl_dir = model_pair
    out = make_scored_output(tmp_path / "o", base_dir, rl_dir, tokenizer_sha256(base_dir), center=center, seq_len=48)
    ds = RemitDataset(out, seq_len=48, create_attention_mask=False)
    assert any(len(ds.row(i)[3]) > 1 for i in range(len(ds))), "rows must pack several documents"
    model, _ = _mcore_model(base_dir, 48)
    batch = to_device(collate([ds[i] for i in range(len(ds))]), torch.device("cpu"))
    with torch.no_grad():
        loss = _OnDevice(model)(batch["tokens"], batch["position_ids"], batch["segment_ids"], labels=batch["labels"])
    valid = batch["loss_mask"] > 0
    # log p_theta vs the stored log p_base, label-aligned
    stored_base = []
    for i in range(len(ds)):
        t = ds.output.read(0, columns=["logp_base"]).column("logp_base")[i].values.to_numpy(zero_copy_only=False)
        row = np.zeros(48, np.float32)
        row[: len(t) - 1] = np.nan_to_num(t[1:])
        stored_base.append(row)
    stored_base = torch.from_numpy(np.stack(stored_base))
    torch.testing.assert_close(-loss[valid], stored_base[valid], rtol=0, atol=2e-5)

    w = online_weights(
        batch["logp_rl"].flatten(), -loss.flatten(), valid.flatten(), group_index(batch["segment_ids"], center), 0.2
    ).view(loss.shape)
    torch.testing.assert_close(w[valid], batch["loss_weight"][valid], rtol=0, atol=1e-4)
    s_on = summarize(
        remit_loss(
            loss,
            batch["loss_mask"],
            "online",
            logp_rl=batch["logp_rl"],
            segment_ids=batch["segment_ids"],
            center=center,
        )[2]
    )
    s_st = summarize(remit_loss(loss, batch["loss_mask"], "static", loss_weight=batch["loss_weight"])[2])
    assert s_on["loss"] == pytest.approx(s_st["loss"], rel=1e-5)
    assert s_on["mean_weight"] == pytest.approx(s_st["mean_weight"], rel=1e-5)
