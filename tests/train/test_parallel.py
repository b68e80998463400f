"""Megatron's parallelism and memory flags in the real trainer (subprocesses; gloo on the CPU).

Each test shows that its flag is in effect (which rank holds what, what runs twice, what is sharded,
when gradients are reduced) and that the trained numbers equal the one-process baseline.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.train import runs
from tests.train.runs import BASE_FLAGS, ok, remit_train, two_ranks, worker

pytestmark = [pytest.mark.megatron, pytest.mark.filterwarnings("ignore::UserWarning")]
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_CURVE = ("loss", "loss_unweighted", "mean_weight", "grad_norm", "tokens", "lr")


def _layers(names) -> set[int]:
    return {int(m[1]) for n in names if (m := _LAYER.match(n))}


def _same_curve(a: list[dict], b: list[dict], rel: float, steps=None) -> None:
    by_step = {r["step"]: r for r in b}
    for r in a:
        if steps is not None and r["step"] not in steps:
            continue
        for key in _CURVE:
            assert by_step[r["step"]][key] == pytest.approx(r[key], rel=rel, abs=1e-12), (r["step"], key)


def _resume_from(run: Path, iteration: int, dst: Path) -> Path:
    """A copy of `run` whose newest checkpoint is `iteration` (later ones removed)."""
    shutil.copytree(run, dst)
    for later in dst.glob("iter_*"):
        if int(later.name[5:]) > iteration:
            shutil.rmtree(later)
    (dst / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    return dst


def _hf(path: Path) -> dict[str, torch.Tensor]:
    from remit.train.convert import read_hf_weights

    return read_hf_weights(path)


# --- pure functions -------------------------------------------------------------------------------


def _layout(pp_rank: int, pp_size: int, layers: int):
    from remit.train.parallel import Layout

    per = layers // pp_size
    return Layout(1, 0, pp_size, pp_rank, 1, 0, layer_offset=pp_rank * per, num_layers=per)


@pytest.mark.parametrize("tied", [False, True])
def test_stage_state_splits_the_full_model_and_global_names_join_it(tied):
    from remit.train.parallel import global_name, stage_state

    gen = torch.Generator().manual_seed(0)
    full = {"embedding.word_embeddings.weight": torch.randn(10, 4, generator=gen)}
    for i in range(4):
        full[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.randn(6, 4, generator=gen)
    full["decoder.final_layernorm.weight"] = torch.randn(4, generator=gen)
    if not tied:
        full["output_layer.weight"] = torch.randn(10, 4, generator=gen)
    joined = {}
    for rank in range(2):
        layout = _layout(rank, 2, 4)
        stage = stage_state(full, layout, tied)
        assert _layers(stage) == {0, 1}  # each stage numbers its own layers from 0
        assert ("embedding.word_embeddings.weight" in stage) == (rank == 0)
        assert ("decoder.final_layernorm.weight" in stage) == (rank == 1)
        # the last stage's output layer: its own tensor, or (tied) a copy of the embedding
        assert ("output_layer.weight" in stage) == (rank == 1)
        if tied and rank == 1:
            assert stage["output_layer.weight"] is full["embedding.word_embeddings.weight"]
        for name, t in stage.items():
            if not (tied and name == "output_layer.weight"):
                joined[global_name(name, layout.layer_offset)] = t
    assert joined.keys() == full.keys() and all(joined[n] is full[n] for n in full)
    with pytest.raises(ValueError, match="no pipeline stage holds"):
        stage_state({"something.else": torch.zeros(1)}, _layout(0, 2, 4), tied)


def test_pipeline_and_recompute_layouts_are_checked():
    from remit.train.parallel import check_layout

    check_layout(4, 2)
    with pytest.raises(ValueError, match=r"pipeline_model_parallel_size 3 does not divide .*num_hidden_layers \(4\)"):
        check_layout(4, 3)
    with pytest.raises(ValueError, match=r"recompute_num_layers 3 exceeds the 2 layers of a pipeline stage"):
        check_layout(4, 2, "block", 3)


def test_sequence_parallel_spec_replaces_every_torch_norm(mcore):
    """Also the q/k norms some architectures add: mcore's torch fallback would refuse them under SP."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_config import TransformerConfig

    from remit.train.parallel import SequenceParallelRMSNorm, sequence_parallel_spec

    config = TransformerConfig(num_layers=3, hidden_size=64, num_attention_heads=4, normalization="RMSNorm")
    config.sequence_parallel = True  # (the config refuses it at TP 1; the spec only reads the flag)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=True)
    if spec.submodules.input_layernorm is not WrappedTorchNorm:
        pytest.skip("Apex or Transformer Engine norms are installed: they support sequence parallelism")
    block = sequence_parallel_spec(config, spec)
    assert block.layer_norm is SequenceParallelRMSNorm and len(block.layer_specs) == 3
    layer = block.layer_specs[0].submodules
    attention = layer.self_attention.submodules
    for norm in (layer.input_layernorm, layer.pre_mlp_layernorm, attention.q_layernorm, attention.k_layernorm):
        assert norm is SequenceParallelRMSNorm
    assert spec.submodules.input_layernorm is WrappedTorchNorm  # the shared spec is left as it was
    norm = SequenceParallelRMSNorm(config, 64, eps=1e-6)
    assert norm.weight.sequence_parallel is True and norm.eps == 1e-6


# --- pipeline parallelism -------------------------------------------------------------------------


@two_ranks()
def test_pipeline_parallel_2_matches_pp_1(baseline, data, random_llama, tmp_path):
    run, rec = tmp_path / "run", tmp_path / "rec"
    worker(
        data,
        run,
        rec,
        nproc=2,
        init_hf=random_llama,
        pipeline_model_parallel_size=2,
        save_interval=3,
        export_hf=tmp_path / "hf-pp2",
        probe=1,
    )
    base = runs.record(baseline / "rec", 0)
    stages = [runs.record(rec, r) for r in range(2)]
    # The two processes hold different parts of the model: layer 0 and the embedding, layer 1 and the head.
    held = [set(s["params"]) for s in stages]
    assert not held[0] & held[1] and held[0] | held[1] == set(base["params"])
    assert _layers(held[0]) == {0} and _layers(held[1]) == {1}
    assert any(n.startswith("embedding.") for n in held[0]) and not any(n.startswith("embedding.") for n in held[1])
    assert {"output_layer.weight", "decoder.final_layernorm.weight"} <= held[1]
    assert [s["layout"]["layer_offset"] for s in stages] == [0, 1]
    # Each stage runs only its own layer: half of the one-process layer calls each.
    assert stages[0]["calls"]["layer"] == stages[1]["calls"]["layer"] == base["calls"]["layer"] // 2
    # Step 1's gradients (before clipping), tensor by tensor, equal the one-process ones.
    got = {**runs.grads(rec, 0), **runs.grads(rec, 1)}
    ref = runs.grads(baseline / "rec", 0)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(run), rel=1e-6)

    # Export: gathered over the stages at the end of the run, equal to exporting the saved checkpoint
    # in one process (dist_checkpointing reassembles the stages), equal to the one-process run's export.
    ok(remit_train("export-hf", "--load", run, "--out", tmp_path / "hf-ckpt"))
    ok(remit_train("export-hf", "--load", baseline / "run", "--out", tmp_path / "hf-base"))
    pp2, ckpt, one = _hf(tmp_path / "hf-pp2"), _hf(tmp_path / "hf-ckpt"), _hf(tmp_path / "hf-base")
    assert pp2.keys() == ckpt.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(pp2[name], ckpt[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(pp2[name], one[name], rtol=1e-5, atol=1e-6, msg=name)

    # Resume the two-stage checkpoint of step 3 in one process: model and optimizer state are resharded.
    resumed = _resume_from(run, 3, tmp_path / "resumed")
    proc = ok(remit_train("--data", data, "--save", resumed, "--train-iters", "6", *BASE_FLAGS))
    assert "resuming at step 3" in proc.stdout
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(resumed), rel=1e-6)


@pytest.mark.slow
@two_ranks()
def test_pipeline_parallel_with_tied_embeddings(data, random_tied_llama, tmp_path):
    """Tied input and output embeddings on two stages: the last stage's copy and the embedding get the
    same (summed) gradient, the gradient of the one shared tensor of a single process."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = {"init_hf": random_tied_llama, "train_iters": 3, "probe": 1}
    worker(data, one / "run", one / "rec", export_hf=one / "hf", **common)
    worker(data, two / "run", two / "rec", nproc=2, pipeline_model_parallel_size=2, export_hf=two / "hf", **common)
    single = runs.record(one / "rec", 0)
    assert "output_layer.weight" not in single["params"]  # one tensor serves both ends
    first, last = runs.record(two / "rec", 0), runs.record(two / "rec", 1)
    assert "embedding.word_embeddings.weight" in first["params"] and "output_layer.weight" in last["params"]
    ref = runs.grads(one / "rec", 0)
    g_first, g_last = runs.grads(two / "rec", 0), runs.grads(two / "rec", 1)
    shared = ref["embedding.word_embeddings.weight"]
    torch.testing.assert_close(g_first["embedding.word_embeddings.weight"], shared, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_last["output_layer.weight"], shared, rtol=1e-5, atol=1e-7)
    for name, g in {**g_first, **g_last}.items():
        if name != "output_layer.weight":
            torch.testing.assert_close(g, ref[name], rtol=1e-5, atol=1e-7, msg=name)
    _same_curve(runs.metrics(one / "run"), runs.metrics(two / "run"), rel=1e-6)
    a, b = _hf(one / "hf"), _hf(two / "hf")
    assert a.keys() == b.keys() and "lm_head.weight" not in a
    for name in a:
        # rounding-level differences (a few float32 ulps): the two-stage sums run in another order
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


# --- sequence parallelism -------------------------------------------------------------------------


@two_ranks()
def test_sequence_parallel_splits_the_sequence_and_sums_the_norm_gradients(baseline, data, random_llama, tmp_path):
    rec = tmp_path / "rec"
    worker(data, tmp_path / "run", rec, nproc=2, tp=2, init_hf=random_llama, sequence_parallel=True, probe=1)
    # Activations between the layers hold half the sequence on each TP rank (the baseline: all 32).
    assert set(runs.record(baseline / "rec", 0)["layer_seq"]) == {32}
    for r in range(2):
        assert set(runs.record(rec, r)["layer_seq"]) == {16}
    # Each rank normalised half of the tokens; the norm weights' gradients were summed over the TP
    # ranks, so both hold the full gradient of one process.
    ref = runs.grads(baseline / "rec", 0)
    norms = [n for n in ref if "layernorm" in n]
    assert len(norms) == 5
    for r in range(2):
        got = runs.grads(rec, r)
        for name in norms:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=(r, name))
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(tmp_path / "run"), rel=1e-4)


# --- distributed optimizer, overlapped gradient reduction -----------------------------------------


@two_ranks()
def test_distributed_optimizer_with_overlapped_grad_reduce(baseline, data, random_llama, tmp_path):
    run, rec = tmp_path / "run", tmp_path / "rec"
    flags = {"use_distributed_optimizer": True, "overlap_grad_reduce": True}
    worker(data, run, rec, nproc=2, init_hf=random_llama, save_interval=3, probe=1, **flags)
    ranks = [runs.record(rec, r) for r in range(2)]
    for r in ranks:
        # The Adam state is sharded: each rank holds about half of it, and together exactly all of it.
        assert r["optimizer"] == "DistributedOptimizer"
        assert 0.3 * r["model_numel"] < r["adam_state_numel"] < 0.7 * r["model_numel"]
        # Gradient reduction started from the backward hooks, not when the step finished.
        assert r["sync_starts"]["in_backward"] > 0 and r["sync_starts"]["at_finish"] == 0
    assert sum(r["adam_state_numel"] for r in ranks) == ranks[0]["model_numel"]
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(run), rel=2e-5)
    # The sharded optimizer state saves and resumes (same flags, two ranks).
    resumed = _resume_from(run, 3, tmp_path / "resumed")
    proc = ok(
        remit_train(
            "--data",
            data,
            "--save",
            resumed,
            "--train-iters",
            "6",
            "--use-distributed-optimizer",
            "--overlap-grad-reduce",
            *BASE_FLAGS,
            nproc=2,
        )
    )
    assert "resuming at step 3" in proc.stdout
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(resumed), rel=2e-5, steps={4, 5, 6})
    # The plain optimizer cannot read the sharded state: refused in one line, before any loading.
    other = _resume_from(run, 3, tmp_path / "other")
    proc = remit_train("--data", data, "--save", other, "--train-iters", "6", *BASE_FLAGS)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"remit-train: error: {other / 'iter_0000003'}: saved with --use-distributed-optimizer, and the two "
        "optimizers store their state differently; resume with --use-distributed-optimizer."
    )


@pytest.mark.slow
@two_ranks()
def test_overlapped_grad_reduce_without_the_distributed_optimizer(baseline, data, random_llama, tmp_path):
    rec = tmp_path / "rec"
    worker(data, tmp_path / "run", rec, nproc=2, init_hf=random_llama, overlap_grad_reduce=True, probe=1)
    for r in range(2):
        starts = runs.record(rec, r)["sync_starts"]
        assert starts["in_backward"] > 0 and starts["at_finish"] == 0
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(tmp_path / "run"), rel=2e-5)


# --- activation recompute in the trainer ----------------------------------------------------------


def test_recompute_in_the_trainer(baseline, data, random_llama, tmp_path):
    """Full recompute of the first layer of each stage ('block', 1 layer): per micro-batch 3 layer
    forwards instead of 2; the training curve is the baseline's."""
    rec = tmp_path / "rec"
    worker(
        data,
        tmp_path / "run",
        rec,
        init_hf=random_llama,
        recompute_granularity="full",
        recompute_method="block",
        recompute_num_layers=1,
        probe=1,
    )
    base, got = runs.record(baseline / "rec", 0)["calls"], runs.record(rec, 0)["calls"]
    assert base["layer"] == base["core_attention"] == 2 * 2 * 5  # 2 layers x 2 micro-batches x steps 2-6
    assert got["layer"] == got["core_attention"] == 3 * 2 * 5
    _same_curve(runs.metrics(baseline / "run"), runs.metrics(tmp_path / "run"), rel=1e-9)


@pytest.mark.slow
@two_ranks()
def test_bf16_with_the_distributed_optimizer_resumes_on_its_curve(data, random_llama, tmp_path):
    """The usual large-run setting: bf16 parameters, fp32 main parameters sharded over DP ranks."""
    run = tmp_path / "run"
    flags = {"bf16": True, "use_distributed_optimizer": True, "train_iters": 4, "save_interval": 2}
    worker(data, run, tmp_path / "rec", nproc=2, init_hf=random_llama, **flags)
    resumed = _resume_from(run, 2, tmp_path / "resumed")
    args = ["--data", data, "--save", resumed, "--train-iters", "4", "--bf16", "--use-distributed-optimizer"]
    ok(remit_train(*args, *BASE_FLAGS, nproc=2))
    _same_curve(runs.metrics(run), runs.metrics(resumed), rel=1e-6)
