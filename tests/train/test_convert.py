"""Sliced loading of HF checkpoints: each rank's parameters, read slice by slice, are bit for bit the
full-tensor reference (`hf_to_mcore`, `stage_state`, `tp_slice`), and a rank reads only its share."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from tests.train.tiny_models import make_tiny

#: name -> (tiny_models family, config overrides). Every tensor randomised (non-zero biases, non-unit norms).
MODELS = {
    # Qwen2: GQA with q/k/v biases, tied; 8 heads in 4 KV groups, so a TP=2 rank reads two groups.
    "qwen2-gqa": ("qwen2", {"num_attention_heads": 8, "num_key_value_heads": 4}),
    # Llama 2: untied, its own lm_head.
    "llama2": ("llama2", {}),
    # Qwen3: q/k norms, head_dim 32 (not hidden / heads), 4 layers for two stages of two.
    "qwen3": ("qwen3", {"num_hidden_layers": 4}),
}

#: (tp, pp) grids covered: every rank of each.
GRIDS = [(1, 1), (2, 1), (1, 2), (2, 2)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("convert")
    out = {name: make_tiny(family, root / name, seed=7, **over) for name, (family, over) in MODELS.items()}
    # The same Qwen2 stored in bfloat16 over several files (a sharded index), as large checkpoints are.
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out["qwen2-gqa"], dtype=torch.bfloat16)
    hf.save_pretrained(root / "qwen2-bf16-sharded", max_shard_size="40KB")
    assert (root / "qwen2-bf16-sharded" / "model.safetensors.index.json").exists()
    out["qwen2-bf16-sharded"] = root / "qwen2-bf16-sharded"
    return out


def _layout(tp: int, tp_rank: int, pp: int, pp_rank: int, num_layers: int):
    from remit.train.parallel import Layout

    per = num_layers // pp
    return Layout(tp, tp_rank, pp, pp_rank, 1, 0, layer_offset=pp_rank * per, num_layers=per)


def _reference(hf_dir: Path, arch, layout) -> dict[str, torch.Tensor]:
    """Today's full path: every tensor read, converted whole, the stage taken, then the TP slice."""
    from remit.train.convert import hf_to_mcore, read_hf_weights, tp_slice
    from remit.train.parallel import stage_state

    stage = stage_state(hf_to_mcore(read_hf_weights(hf_dir), arch), layout, arch.tie_embeddings)
    return {name: tp_slice(name, t, layout.tp_rank, layout.tp_size) for name, t in stage.items()}


def _sliced(src, arch, layout, names) -> dict[str, torch.Tensor]:
    from remit.train.convert import read_part
    from remit.train.parallel import global_name

    return {n: read_part(src, global_name(n, layout.layer_offset), arch, layout.tp_rank, layout.tp_size) for n in names}


@pytest.mark.parametrize("name", sorted([*MODELS, "qwen2-bf16-sharded"]))
@pytest.mark.parametrize(("tp", "pp"), GRIDS)
def test_each_ranks_slices_equal_the_full_path_bit_for_bit(models, name, tp, pp):
    from remit.train.architecture import read_architecture
    from remit.train.convert import HFTensors

    arch = read_architecture(models[name])
    for tp_rank in range(tp):
        for pp_rank in range(pp):
            layout = _layout(tp, tp_rank, pp, pp_rank, arch.num_layers)
            want = _reference(models[name], arch, layout)
            with HFTensors.open(models[name]) as src:
                got = _sliced(src, arch, layout, want)
            for key, ref in want.items():
                assert got[key].dtype == ref.dtype and torch.equal(got[key], ref), (name, tp_rank, pp_rank, key)


class _Recorder:
    """safetensors' safe_open, recording the bytes of every tensor or slice read through it."""

    def __init__(self) -> None:
        import safetensors

        self.real = safetensors.safe_open
        self.reads: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def __call__(self, *args, **kwargs):
        recorder = self

        class Slice:
            def __init__(self, name, real):
                self.name, self.real = name, real

            def get_shape(self):
                return self.real.get_shape()

            def __getitem__(self, index):
                t = self.real[index]
                recorder.reads.append((self.name, t.numel() * t.element_size()))
                return t

        class Handle:
            def __init__(self, real):
                self.real = real

            def keys(self):
                return self.real.keys()

            def get_slice(self, name):
                return Slice(name, self.real.get_slice(name))

            def get_tensor(self, name):
                t = self.real.get_tensor(name)
                recorder.reads.append((name, t.numel() * t.element_size()))
                return t

        with self.real(*args, **kwargs) as f:
            yield Handle(f)

    def total(self) -> int:
        return sum(n for _, n in self.reads)


def _checkpoint_bytes(hf_dir: Path) -> dict[str, int]:
    from remit.train.convert import HFTensors

    with HFTensors.open(hf_dir) as src:
        return {n: src.read(n).numel() * src.read(n).element_size() for n in src.shapes}


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (2, 2)])
def test_a_rank_reads_only_its_share(models, monkeypatch, tp, pp):
    """Bytes read per rank: 1/(TP*PP) of the checkpoint, plus only the replicated tensors (the norms,
    and under pipeline parallelism the embedding on the first stage and the output on the last), and
    the ranks together read every tensor exactly once per replica."""
    import safetensors

    from remit.train.architecture import read_architecture
    from remit.train.convert import HFTensors

    hf_dir = models["llama2"]
    arch = read_architecture(hf_dir)
    sizes = _checkpoint_bytes(hf_dir)
    total = sum(sizes.values())
    replicated = sum(n for name, n in sizes.items() if name.endswith("norm.weight"))
    embeddings = sizes["model.embed_tokens.weight"] + sizes["lm_head.weight"]
    recorder = _Recorder()
    monkeypatch.setattr(safetensors, "safe_open", recorder)
    per_rank = {}
    for tp_rank in range(tp):
        for pp_rank in range(pp):
            layout = _layout(tp, tp_rank, pp, pp_rank, arch.num_layers)
            recorder.reads.clear()
            with HFTensors.open(hf_dir) as src:
                _sliced(src, arch, layout, _reference(hf_dir, arch, layout))
            per_rank[tp_rank, pp_rank] = recorder.total()
            # A tensor appears in the reads only if this stage holds it.
            layers = {int(n.split(".")[2]) for n, _ in recorder.reads if n.startswith("model.layers.")}
            assert layers == set(range(layout.layer_offset, layout.layer_offset + layout.num_layers))
            assert ("model.embed_tokens.weight" in dict(recorder.reads)) == layout.first_stage
            assert ("lm_head.weight" in dict(recorder.reads)) == layout.last_stage
    sharded = total - replicated
    for (tp_rank, pp_rank), got in per_rank.items():
        # the stage's norms are read whole by every TP rank; everything else is split TP x PP ways
        # (embedding and lm_head are split TP ways only, on one stage each, so also 1/(TP*PP) on average).
        assert got <= (sharded - embeddings) / (tp * pp) + embeddings / tp + replicated / pp + 1, (tp_rank, pp_rank)
        assert got < 0.75 * total
    assert sum(per_rank.values()) == sharded + replicated * tp


def test_load_hf_into_reads_each_byte_once_and_fills_the_reference(mcore, models, monkeypatch):
    """At TP=1 the whole model is loaded into a GPTModel built without Megatron's initialisation:
    every parameter equals the reference exactly, and each checkpoint byte is read once."""
    import safetensors

    from remit.train.architecture import read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    for name in ("qwen2-bf16-sharded", "llama2"):
        hf_dir = models[name]
        arch = read_architecture(hf_dir)
        model = build_gpt_model(arch, transformer_config(arch, perform_initialization=False), 32)
        recorder = _Recorder()
        monkeypatch.setattr(safetensors, "safe_open", recorder)
        load_hf_into(model, hf_dir, arch, 0, 1)
        monkeypatch.setattr(safetensors, "safe_open", recorder.real)
        sizes = _checkpoint_bytes(hf_dir)
        read = sorted(n for n, _ in recorder.reads)
        assert read == sorted(sizes) and recorder.total() == sum(sizes.values()), name
        want = _reference(hf_dir, arch, _layout(1, 0, 1, 0, arch.num_layers))
        params = dict(model.named_parameters())
        assert set(params) == set(want)
        for key, p in params.items():
            assert torch.equal(p.detach(), want[key].to(p.dtype)), (name, key)


def test_a_tied_checkpoint_whose_lm_head_differs_is_refused_on_the_slices(mcore, models, tmp_path):
    """The tied-embedding check compares the rows this rank reads; a differing lm_head is still refused."""
    from safetensors.torch import load_file, save_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    src = models["qwen2-gqa"]
    arch = read_architecture(src)
    weights = load_file(str(src / "model.safetensors"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((src / "config.json").read_text())
    head = weights["model.embed_tokens.weight"].clone()
    head[-1, 0] += 1.0  # the last row: TP rank 1's share
    save_file({**weights, "lm_head.weight": head}, str(bad / "model.safetensors"))
    model = build_gpt_model(arch, transformer_config(arch, perform_initialization=False), 32)
    with pytest.raises(ArchitectureError, match="lm_head.weight differs"):
        load_hf_into(model, bad, arch, 0, 1)
    save_file(
        {**weights, "lm_head.weight": weights["model.embed_tokens.weight"].clone()}, str(bad / "model.safetensors")
    )
    load_hf_into(model, bad, arch, 0, 1)


def test_a_stale_rope_buffer_is_refused_by_the_sliced_load(mcore, models, tmp_path):
    """Saved RoPE buffers are still compared with the config's frequencies when loading by slices."""
    from safetensors.torch import load_file, save_file

    from remit.train.architecture import ArchitectureError, read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    src = models["llama2"]
    arch = read_architecture(src)
    weights = load_file(str(src / "model.safetensors"))
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "config.json").write_text((src / "config.json").read_text())
    model = build_gpt_model(arch, transformer_config(arch, perform_initialization=False), 32)
    for inv_freq, ok in ((arch.inv_freq(), True), (arch.inv_freq() * 2, False)):
        save_file(
            {**weights, "model.layers.0.self_attn.rotary_emb.inv_freq": inv_freq}, str(stale / "model.safetensors")
        )
        if ok:
            load_hf_into(model, stale, arch, 0, 1)
        else:
            with pytest.raises(ArchitectureError, match="differs from the RoPE frequencies"):
                load_hf_into(model, stale, arch, 0, 1)


@pytest.mark.parametrize("attention", ["sdpa", "te"])
def test_a_model_built_without_initialisation_carries_the_same_parameter_attributes(mcore, models, attention):
    """Megatron sets the tensor-parallel attributes of a weight inside its initialisation; a model built
    without it must carry the same ones (the gradient norm and the checkpoint read them)."""
    if attention == "te":
        pytest.importorskip("transformer_engine")
    from remit.train.architecture import read_architecture
    from remit.train.model import build_gpt_model, transformer_config

    for name in ("qwen2-gqa", "llama2"):
        arch = read_architecture(models[name])
        built = {
            init: build_gpt_model(
                arch, transformer_config(arch, attention=attention, perform_initialization=init), 32, attention
            )
            for init in (True, False)
        }
        with_init, without = (dict(built[i].named_parameters()) for i in (True, False))
        assert set(with_init) == set(without)
        for key, p in with_init.items():
            assert vars(p) == vars(without[key]), (name, key)
            if p.ndim == 2:  # every matrix is split (embedding, output, qkv, proj, fc1, fc2)
                assert without[key].tensor_model_parallel, (name, key)
