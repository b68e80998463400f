"""The tokenizer and the model shape of the experiment (written as Hugging Face files).

- A byte-level BPE tokenizer trained on the pre-training split, with every digit its own token (a
  number's digits are then always the same tokens, whatever their neighbours), Llama-style specials.
- The base model is a small Llama; its `config.json` is all `remit-train --init-config` needs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    """A small Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention, untied embeddings)."""

    hidden: int = 96
    layers: int = 4
    heads: int = 3
    kv_heads: int = 1
    ffn: int = 256
    vocab: int = 384
    """Target BPE vocabulary (the tokenizer may end up smaller: then the config takes its size)."""
    max_positions: int = 512


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> int:
    """Train and save the tokenizer to `out`; return its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out)
    return len(fast)


def write_config(shape: ModelShape, vocab_size: int, out: Path) -> Path:
    """A Hugging Face Llama config.json for `remit-train --init-config`."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    }
    path = out / "config.json"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def shape_dict(shape: ModelShape) -> dict:
    return asdict(shape)
