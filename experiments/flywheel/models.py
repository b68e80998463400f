"""The tokenizer and the model shape of the experiment (written as Hugging Face files).

- A word-level tokenizer: every word, number and punctuation mark of the generator's language is one
  token (numbers up to the task's largest value included), so a step of a solution is one fact of a
  small addition table; Llama-style specials. Decoded text has spaces between tokens ("= 7 .").
- The base model is a small Llama; its `config.json` is all `remit-train --init-config` needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from remit.common.atomic import write_json_atomic


@dataclass(frozen=True)
class ModelShape:
    """A small Llama (RMSNorm, SwiGLU, RoPE, grouped-query attention, untied embeddings)."""

    hidden: int = 96
    layers: int = 4
    heads: int = 3
    kv_heads: int = 1
    ffn: int = 256
    max_positions: int = 512


def build_tokenizer(texts: list[str], out: Path) -> int:
    """Build the word-level tokenizer over every token of `texts` (sorted, after the specials), save it
    to `out` and return its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    split = pre_tokenizers.Whitespace()  # runs of word characters, runs of punctuation
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t)})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = split
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
    write_json_atomic(path, cfg)
    return path


def shape_dict(shape: ModelShape) -> dict:
    return asdict(shape)
