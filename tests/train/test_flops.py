"""remit.train.flops against independent references: torch's FlopCounterMode over a transformers forward
pass (matrix multiplies per token, attention FLOPs per (query, key) pair and layer) times the pairs a
brute-force document mask allows; plus segment ids -> document lengths and the peak table."""

from __future__ import annotations

import numpy as np
import pytest

from remit.train.flops import (
    attention_flops,
    attention_pairs,
    doc_lengths_from_segments,
    forward_flops,
    matmul_params,
    mfu,
    peak_tflops,
    step_flops,
)
from tests.train.tiny_models import ARCHS, make_tiny, packed_batch


def _allowed_pairs(segment_ids: np.ndarray, window: int | None) -> int:
    """(query, key) pairs a document-masked causal attention computes, counted on the dense mask."""
    total = 0
    for row in segment_ids:
        q = np.arange(len(row))[:, None]
        k = np.arange(len(row))[None, :]
        allowed = (row[:, None] == row[None, :]) & (row[:, None] != -1) & (k <= q)
        if window is not None:
            allowed &= q - k < window
        total += int(allowed.sum())
    return total


def _counted(model, seq_len: int) -> tuple[float, list[float]]:
    """(FLOPs of matrix multiplies per token, FLOPs per (query, key) pair of each layer), measured by
    FlopCounterMode on one unmasked forward pass of `seq_len` tokens (eager attention: QK^T and PV are
    batched matrix multiplies over the whole seq_len x seq_len)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(3, model.config.vocab_size, (1, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids)
    counts = counter.get_flop_counts()
    aten = torch.ops.aten
    linear = sum(v for op, v in counts["Global"].items() if op in (aten.mm, aten.addmm))
    assert linear + counts["Global"].get(aten.bmm, 0) == counter.get_total_flops()  # nothing else counted
    per_layer = []
    for i in range(model.config.num_hidden_layers):
        layer = next(v for k, v in counts.items() if k.endswith(f"layers.{i}.self_attn"))
        per_layer.append(layer.get(aten.bmm, 0) / seq_len**2)
    return linear / seq_len, per_layer


@pytest.mark.parametrize("name", list(ARCHS))
def test_forward_flops_equal_a_flop_counter_times_the_document_mask(name, tmp_path):
    from remit.train.architecture import read_architecture
    from tests.train.tiny_models import load_hf

    folder = make_tiny(name, tmp_path / name)
    arch = read_architecture(folder)
    per_token, per_pair = _counted(load_hf(folder), seq_len=24)
    assert matmul_params(arch) * 2 == per_token

    batch = packed_batch([[5, 9, 3], [10, 4], [20]], pad_to=20)  # the second row ends in 6 padding positions
    seg = batch["segment_ids"].numpy()
    lengths = doc_lengths_from_segments(batch["segment_ids"])
    assert lengths.tolist() == [5, 9, 3, 10, 4, 20]
    expected = per_token * int((seg != -1).sum()) + sum(
        rate * _allowed_pairs(seg, window) for rate, window in zip(per_pair, arch.windows)
    )
    assert forward_flops(arch, lengths) == expected
    assert step_flops(arch, lengths) == 3 * expected
    if arch.has_windows:  # the test's mistral and qwen2-window have windows shorter than these documents
        assert attention_flops(arch, lengths) < sum(rate * _allowed_pairs(seg, None) for rate in per_pair)


def test_two_documents_of_half_the_row_cost_half_the_attention(tmp_path):
    from remit.train.architecture import read_architecture

    arch = read_architecture(make_tiny("llama3.2", tmp_path / "m"))
    s = 4096
    one, two = attention_flops(arch, [s]), attention_flops(arch, [s // 2, s // 2])
    assert two / one == pytest.approx(0.5, abs=1e-3)
    assert two / one == (s // 2 + 1) / (s + 1)  # exact: 2 x (S/2)(S/2+1)/2 over S(S+1)/2
    # The matrix multiplies do not depend on how the row is cut.
    assert step_flops(arch, [s]) - step_flops(arch, [s // 2] * 2) == 3 * (one - two)


def test_attention_pairs_match_a_loop():
    for lengths in ([1], [7], [3, 1, 12], [0, 5], [64, 9]):
        for window in (None, 1, 4, 64, 100):
            loop = sum(min(i + 1, window or i + 1) for n in lengths for i in range(n))
            assert attention_pairs(lengths, window) == loop, (lengths, window)
    with pytest.raises(ValueError, match="window"):
        attention_pairs([4], 0)
    with pytest.raises(ValueError, match="negative"):
        attention_pairs([4, -1])


def test_llama_3_2_1b_shape_counts_every_weight_but_the_norms():
    """Llama-3.2-1B (tied): the output layer is the embedding matrix, counted once, as a matrix multiply."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from remit.train.architecture import architecture_from_config

    fields = dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**fields))
    weights = sum(p.numel() for n, p in model.named_parameters() if "norm" not in n)
    arch = architecture_from_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"], **fields})
    assert matmul_params(arch) == weights == 1_235_746_816
    # 4096 tokens in one document: 6N per token plus the causal attention.
    per_token = step_flops(arch, [4096]) / 4096
    assert per_token == pytest.approx(6 * weights + 3 * 16 * 4 * 2048 * 4097 / 2)


@pytest.mark.parametrize(
    ("segments", "lengths"),
    [
        ([[0, 0, 1, 1, 1, 2]], [2, 3, 1]),
        ([[0, 0, 0, -1, -1]], [3]),  # padding is not a document
        ([[0, 1], [0, 1]], [1, 1, 1, 1]),  # rows never share a document
        ([[3, 3], [3, 3]], [2, 2]),  # ... even with the same id at the boundary
        ([[-1, -1]], []),
        ([0, 0, 5], [2, 1]),  # one row, [S]
        ([[7], [-1]], [1]),
    ],
)
def test_doc_lengths_from_segments(segments, lengths):
    import torch

    assert doc_lengths_from_segments(np.array(segments)).tolist() == lengths
    assert doc_lengths_from_segments(torch.tensor(segments)).tolist() == lengths


def test_doc_lengths_from_the_dataset_of_a_padded_row():
    from remit.train.dataset import make_sample

    seq_len = 12
    row = np.arange(3, 3 + 9, dtype=np.int32)  # a short last row: 9 tokens -> 8 positions, 4 of padding
    sample = make_sample(row, np.ones(9, np.float32), np.zeros(9, np.float32), np.array([0, 5]), seq_len, False)
    assert doc_lengths_from_segments(sample["segment_ids"]).tolist() == [5, 3]


def test_peaks():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert peak_tflops("NVIDIA H100 NVL") == 835.5
    assert peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA GH200 480GB") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == peak_tflops("NVIDIA A100 80GB PCIe") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.1
    assert peak_tflops("NVIDIA L40") == 181.0
    assert peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("NVIDIA A10G") is None  # not an A10; no datasheet figure
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32") == 66.9
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp32") == 19.5
    assert peak_tflops("Some Other GPU") is None
    assert peak_tflops("cpu", override=2.5) == 2.5
    with pytest.raises(ValueError, match="dtype"):
        peak_tflops("NVIDIA H100", "fp16")
    with pytest.raises(ValueError, match="positive"):
        peak_tflops("NVIDIA H100", override=0)
    assert mfu(989.4e12 * 0.4, 1.0, 989.4) == pytest.approx(0.4)
    assert mfu(1e12, 1.0, None) is None
