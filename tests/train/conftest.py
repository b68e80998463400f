"""Fixtures shared by the Megatron tests of remit.train."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def mcore():
    """A world of one with Megatron's groups (TP = PP = 1); the CPU layer is removed again afterwards."""
    from remit.train import cpu_compat, distributed

    created = distributed.init(1)
    cpu_compat.seed_rng(0)
    yield
    distributed.teardown(created)
    cpu_compat.remove()


def _randomised_copy(src, dst, seed: int, tie: bool | None = None):
    """Save the HF Llama in `src` to `dst` with every tensor moved away from its initial value (norm
    weights in [0.6, 1.4] instead of 1), with `src`'s tokenizer files. `tie` rebuilds it tied/untied."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    if tie is not None and tie != model.config.tie_word_embeddings:
        model.config.tie_word_embeddings = tie
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model.config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(0.6 + 0.8 * torch.rand(p.shape, generator=gen))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(dst)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    return dst


@pytest.fixture(scope="session")
def random_llama(tmp_path_factory, model_pair):
    """The fixture Llama (untied, 2 layers) with every tensor randomised, and its tokenizer."""
    return _randomised_copy(model_pair[0], tmp_path_factory.mktemp("random") / "llama", seed=21)


@pytest.fixture(scope="session")
def random_tied_llama(tmp_path_factory, model_pair):
    """The same shape with tied input and output embeddings, every tensor randomised."""
    return _randomised_copy(model_pair[0], tmp_path_factory.mktemp("random") / "tied", seed=22, tie=True)


@pytest.fixture(scope="session")
def data(tmp_path_factory, model_pair):
    """A synthetic annotation output (8 shards of 6 rows, 32-token rows) for the fixture's tokenizer."""
    from remit.shards.synthetic import make_output
    from remit.train.preflight import tokenizer_sha256

    return make_output(
        tmp_path_factory.mktemp("data") / "out",
        n_docs=50,
        seq_len=32,
        vocab=800,
        doc_len=(3, 60),
        rows_per_shard=6,
        seed=11,
        tokenizer_sha256=tokenizer_sha256(model_pair[0]),
    )


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, data, random_llama):
    """One process, fp32, online weights, 6 steps of 2 micro-batches of 2, checkpoints at 3 and 6; the
    worker records each step's samples and the probes (parameters, step-1 gradients, calls)."""
    from tests.train.runs import worker

    root = tmp_path_factory.mktemp("baseline")
    worker(data, root / "run", root / "rec", init_hf=random_llama, save_interval=3, probe=1)
    return root
