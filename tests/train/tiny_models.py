"""Tiny Hugging Face models of every supported architecture, with every tensor randomised.

Freshly initialised models hide conversion bugs: zero biases and unit norm weights make a dropped
bias or norm invisible. Here biases are N(0, 0.5), norm weights 1 + 0.5 N(0, 1) and matrices
N(0, 0.08), so every tensor changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

VOCAB = 320

#: name -> (transformers config class name, config fields). Small enough for a test, large enough for
#: grouped-query attention, a head_dim that is not hidden / heads, and every RoPE frequency regime.
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    # Llama 2: default RoPE, untied.
    "llama2": ("LlamaConfig", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    # Llama with linear RoPE scaling (long-context fine-tunes of Llama 2).
    "llama-linear": ("LlamaConfig", dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4})),
    # Llama 3.1: llama3 RoPE scaling (an original context of 64 puts frequencies in all three bands).
    "llama3.1": (
        "LlamaConfig",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        ),
    ),
    # Llama 3.2: llama3 scaling with factor 32, tied embeddings.
    "llama3.2": (
        "LlamaConfig",
        dict(
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    # Mistral with a sliding window shorter than the test sequences.
    "mistral": ("MistralConfig", dict(sliding_window=7, rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    # Qwen2.5: q/k/v biases, tied (as the small Qwen2.5 models are).
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
    # Qwen2 with sliding-window layers from layer 1 on (max_window_layers).
    "qwen2-window": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=6, max_window_layers=1)),
    # Qwen3: per-head q/k RMSNorm, a head_dim (32) that is not hidden / heads (16).
    "qwen3": ("Qwen3Config", dict(head_dim=32)),
    # SmolLM3: the middle layer has no RoPE; tied.
    "smollm3": ("SmolLM3Config", dict(no_rope_layers=[1, 0, 1], num_hidden_layers=3, tie_word_embeddings=True)),
}

BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def hf_config(name: str, **overrides: Any):
    import transformers

    cls_name, fields = ARCHS[name]
    return getattr(transformers, cls_name)(**{**BASE, **fields, **overrides})


def randomise(model, seed: int) -> None:
    """Every parameter non-trivial: norms 1 + 0.5 N(0,1), biases 0.5 N(0,1), matrices 0.08 N(0,1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.copy_(1 + 0.5 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.08 * noise)


def make_tiny(name: str, out: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random `name` model (fp32, safetensors) to `out`; return `out`."""
    from transformers import AutoModelForCausalLM

    config = hf_config(name, **overrides)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config).eval()
    randomise(model, seed)
    model.save_pretrained(out)
    return Path(out)


def load_hf(path: Path, attn: str = "eager"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype="float32").eval()


def packed_batch(rows: list[list[int]], seed: int = 0, pad_to: int | None = None) -> dict[str, Any]:
    """A micro-batch of packed rows: `rows[r]` lists the document lengths of row r. Position ids restart
    at 0 at each document; a row shorter than `pad_to` ends in padding (segment id -1), as the last row
    of an output does. Also returns `docs`: (row, start, length) of every document."""
    import torch

    s = pad_to or max(sum(r) for r in rows)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (len(rows), s), generator=g)
    segment_ids = torch.full((len(rows), s), -1, dtype=torch.long)
    position_ids = torch.zeros(len(rows), s, dtype=torch.long)
    docs = []
    for r, lengths in enumerate(rows):
        start = 0
        for i, n in enumerate(lengths):
            segment_ids[r, start : start + n] = i
            position_ids[r, start : start + n] = torch.arange(n)
            docs.append((r, start, n))
            start += n
        position_ids[r, start:] = torch.arange(s - start)
    return {"tokens": tokens, "position_ids": position_ids, "segment_ids": segment_ids, "docs": docs}
