"""The non-finite step guard: what Megatron's own optimizer step does with an inf gradient (it applies it),
what the guard does instead (refuses before any weight moves), and which samples it blames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.megatron,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _engine_with_grads(model_dir, *flags: str):
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
    engine = build_engine(cfg, shape, "sdpa", 16, model_dir)
    tokens = torch.randint(3, shape.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(16).repeat(2, 1)
    mask = torch.zeros(2, 16, dtype=torch.long)  # segment ids: one document per row
    engine.model.zero_grad_buffer()
    engine.optimizer.zero_grad()
    engine.scheduler.step(1)
    engine.model(tokens[:, :-1], pos, mask, labels=tokens[:, 1:]).mean().backward()
    return engine


def _weights(engine) -> dict[str, torch.Tensor]:
    from remit.train.parallel import unwrap

    return {n: p.detach().clone() for n, p in unwrap(engine.model).named_parameters()}


def _poison(engine) -> None:
    from remit.train.parallel import unwrap

    p = next(iter(unwrap(engine.model).parameters()))
    p.main_grad.view(-1)[0] = float("inf")


@pytest.mark.parametrize("flags", [(), ("--bf16",)], ids=["fp32", "bf16"])
def test_megatron_step_applies_an_inf_gradient_the_guarded_step_does_not(mcore, random_llama, flags):
    from remit.train.guard import NonFiniteStepError, StepGuard, guarded_step

    # Megatron's own step: no loss scaler in fp32/bf16, so nothing checks; the weights become NaN.
    engine = _engine_with_grads(random_llama, *flags)
    _poison(engine)
    ok, norm, _ = engine.optimizer.step()
    assert ok and not np.isfinite(norm)
    assert any(not bool(torch.isfinite(w).all()) for w in _weights(engine).values())

    # The trainer's step: refused before any weight moves, with the step, rank and samples named.
    engine = _engine_with_grads(random_llama, *flags)
    before = _weights(engine)
    _poison(engine)
    guard = StepGuard("none", 0.2, "row", lambda: "Resume from X.", rank=0, dp_rank=0)
    with pytest.raises(NonFiniteStepError) as err:
        guarded_step(engine.optimizer, lambda n: guard.check_grad_norm(7, n, loss=2.5, seen=[np.array([11, 4])]))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("step 7: the gradient norm is inf while the loss (2.5) is finite")
    assert "data-parallel rank 0 (rank 0): 11, 4" in msg and msg.endswith("Resume from X.")
    after = _weights(engine)
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_guarded_step_equals_megatron_step_when_finite(mcore, random_llama):
    """With finite gradients the guarded step is Megatron's step: same norm, same clipped update."""
    from remit.train.guard import guarded_step

    a = _engine_with_grads(random_llama, "--clip-grad", "0.05")
    _, norm_a, _ = a.optimizer.step()
    b = _engine_with_grads(random_llama, "--clip-grad", "0.05")
    norm_b = guarded_step(b.optimizer, lambda n: None)
    assert norm_b == pytest.approx(norm_a, rel=1e-12) and norm_a > 0.05  # clipping was active
    wa, wb = _weights(a), _weights(b)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=0, msg=name)


def _records(mode_bad: str):
    """Three micro-batches of two samples with random, finite values, and one corrupted input."""
    from remit.train.guard import MicroBatchLoss

    gen = torch.Generator().manual_seed(3)
    out = []
    for k in range(3):
        seg = torch.zeros(2, 10, dtype=torch.long)
        seg[:, 5:] = 1
        out.append(
            MicroBatchLoss(
                sample_ids=np.array([10 * k, 10 * k + 1]),
                per_token_loss=torch.rand(2, 10, generator=gen) * 5,
                loss_mask=(torch.rand(2, 10, generator=gen) > 0.2).float(),
                loss_weight=0.8 + 0.4 * torch.rand(2, 10, generator=gen),
                logp_rl=-torch.rand(2, 10, generator=gen) * 5,
                segment_ids=seg,
            )
        )
    r = out[1]
    r.loss_mask[1, 3] = 1.0
    if mode_bad == "logp_rl":
        r.logp_rl[1, 3] = float("-inf")
    elif mode_bad == "weight":
        r.loss_weight[1, 3] = float("nan")
    else:
        r.per_token_loss[1, 3] = float("inf")
    return out


@pytest.mark.parametrize(
    "mode, bad",
    [("online", "logp_rl"), ("static", "weight"), ("none", "loss"), ("online", "loss"), ("static", "loss")],
)
def test_the_samples_behind_a_nonfinite_loss_are_named(mode, bad):
    from remit.train.guard import nonfinite_samples

    assert nonfinite_samples(_records(bad), mode, 0.2, "segment") == [11]
    assert nonfinite_samples(_records(bad), mode, 0.2, "row") == [11]


def test_a_bad_input_the_mode_does_not_read_is_not_blamed():
    """`none` ignores weights and stored log-probs: a NaN there changes nothing and is not reported."""
    from remit.train.guard import nonfinite_samples

    assert nonfinite_samples(_records("weight"), "none", 0.2, "row") == []
    assert nonfinite_samples(_records("logp_rl"), "static", 0.2, "row") == []
