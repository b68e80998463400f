"""The engine as the trainer builds it, in this process: bf16 parameters with fp32 main parameters, the
per-token loss from fp32-upcast logits, and activation recompute (really recomputing, same gradients)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.megatron,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
SEQ = 24


def _engine(model_dir, *flags: str):
    """Build the engine from CLI flags, exactly as `remit-train` does."""
    from remit.common.flags import config_from_args
    from remit.train import cpu_compat
    from remit.train.architecture import read_architecture
    from remit.train.cli import train_parser
    from remit.train.config import TrainConfig
    from remit.train.engine import build_engine

    args = ["--data", "unused", "--save", "unused", "--init-hf", str(model_dir), "--train-iters", "4", *flags]
    cfg = config_from_args(TrainConfig, train_parser().parse_args(args))
    shape = read_architecture(model_dir)
    cpu_compat.seed_rng(0)
    return build_engine(cfg, shape, "sdpa", SEQ, model_dir), shape


def _batch(vocab: int, seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, vocab, (b, SEQ + 1), generator=gen)
    seg = torch.zeros(b, SEQ, dtype=torch.long)
    seg[:, SEQ // 2 :] = 1  # two documents per row
    pos = torch.arange(SEQ).repeat(b, 1)
    pos[:, SEQ // 2 :] -= SEQ // 2

    return {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "position_ids": pos, "mask": seg}


def _loss(engine, batch) -> torch.Tensor:
    return engine.model(batch["tokens"], batch["position_ids"], batch["mask"], labels=batch["labels"])


def test_bf16_every_parameter_in_bf16_main_parameters_in_fp32(mcore, random_llama):
    from remit.train.convert import hf_to_mcore, read_hf_weights
    from remit.train.parallel import unwrap

    engine, shape = _engine(random_llama, "--bf16")
    model = unwrap(engine.model)
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert any("layernorm" in n for n in params)  # the norm weights, which torch would create in fp32
    main = [p for o in engine.optimizer.chained_optimizers for p in o.get_parameters()]
    assert len(main) == len(params) and {p.dtype for p in main} == {torch.float32}
    # The model holds the checkpoint's weights rounded to bf16; the main copies start from them.
    full = hf_to_mcore(read_hf_weights(random_llama), shape)
    for name, p in params.items():
        torch.testing.assert_close(p, full[name].to(torch.bfloat16), rtol=0, atol=0, msg=name)
    assert sorted(float(m.double().sum()) for m in main) == pytest.approx(
        sorted(float(p.double().sum()) for p in params.values()), rel=1e-12
    )
    loss = _loss(engine, _batch(shape.vocab_size))
    loss.sum().backward()
    grads = [p.main_grad for p in params.values()]
    assert {g.dtype for g in grads} == {torch.float32} and all(bool(g.abs().sum() > 0) for g in grads)


def test_bf16_per_token_loss_is_computed_from_fp32_upcast_logits(mcore, random_llama):
    """`online` takes log p_theta = -per-token loss. In bf16 that loss must come from the logits upcast to
    fp32: a bf16 cross-entropy would be off by up to ~0.03 nats, as much as the weights' own signal."""
    import torch.nn.functional as F

    engine, shape = _engine(random_llama, "--bf16")
    batch = _batch(shape.vocab_size, seed=1)
    with torch.no_grad():
        per_token = _loss(engine, batch)
        logits = engine.model(batch["tokens"], batch["position_ids"], batch["mask"])  # bf16 values, upcast
    assert per_token.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.equal(logits, logits.bfloat16().float())  # the model computed them in bf16
    fp32_ce = F.cross_entropy(logits.transpose(1, 2), batch["labels"], reduction="none")
    torch.testing.assert_close(per_token, fp32_ce, rtol=0, atol=2e-5)
    # The check can tell the two apart: a cross-entropy in bf16 is visibly off.
    bf16_ce = F.cross_entropy(logits.bfloat16().transpose(1, 2), batch["labels"], reduction="none").float()
    assert float((bf16_ce - fp32_ce).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "flags, layer_calls, attention_calls",
    [
        ((), 2, 2),
        (("--recompute-granularity", "selective"), 2, 4),
        (("--recompute-granularity", "full"), 4, 4),
        (("--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "2"), 4, 4),
        (("--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "1"), 3, 3),
    ],
    ids=["none", "selective", "full-uniform-1", "full-uniform-2", "full-block-1"],
)
def test_recompute_recomputes_and_keeps_the_gradients(
    mcore, random_llama, monkeypatch, flags, layer_calls, attention_calls
):
    """One forward and backward of the 2-layer model: the flag decides how many times each layer and
    each core attention runs (recomputation in the backward pass), never the gradients."""
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from remit.train.parallel import unwrap

    reference, shape = _engine(random_llama)
    batch = _batch(shape.vocab_size, seed=2)
    _loss(reference, batch).sum().backward()
    ref_grads = {n: p.main_grad.clone() for n, p in unwrap(reference.model).named_parameters()}

    engine, _ = _engine(random_llama, *flags)
    # whatever module the layer spec uses for the core attention (the part selective recompute redoes)
    core_attention = type(unwrap(engine.model).decoder.layers[0].self_attention.core_attention)
    calls = {"layer": 0, "attention": 0}
    layer_forward, attention_forward = TransformerLayer.forward, core_attention.forward

    def count_layer(self, *args, **kwargs):
        calls["layer"] += 1
        return layer_forward(self, *args, **kwargs)

    def count_attention(self, *args, **kwargs):
        calls["attention"] += 1
        return attention_forward(self, *args, **kwargs)

    monkeypatch.setattr(TransformerLayer, "forward", count_layer)
    monkeypatch.setattr(core_attention, "forward", count_attention)
    loss = _loss(engine, batch)
    forward_calls = dict(calls)
    loss.sum().backward()
    assert forward_calls == {"layer": 2, "attention": 2}
    assert calls == {"layer": layer_calls, "attention": attention_calls}
    for name, p in unwrap(engine.model).named_parameters():
        torch.testing.assert_close(p.main_grad, ref_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_recompute_settings_that_do_not_fit_are_refused(mcore, random_llama):
    with pytest.raises(ValueError, match=r"recompute_num_layers 3 exceeds the 2 layers of a pipeline stage"):
        _engine(random_llama, "--recompute-granularity", "full", "--recompute-num-layers", "3")


def test_sequence_parallel_needs_a_sequence_length_divisible_by_tp(mcore, random_llama):
    from remit.common.flags import config_from_args
    from remit.train.architecture import read_architecture
    from remit.train.cli import train_parser
    from remit.train.config import TrainConfig
    from remit.train.engine import build_engine

    args = ["--data", "d", "--save", "s", "--init-hf", str(random_llama), "--train-iters", "2"]
    cfg = config_from_args(
        TrainConfig, train_parser().parse_args([*args, "--tensor-model-parallel-size", "2", "--sequence-parallel"])
    )
    with pytest.raises(ValueError, match=r"^sequence_parallel: the sequence length 25 is not divisible by .* 2"):
        build_engine(cfg, read_architecture(random_llama), "sdpa", 25, random_llama)
