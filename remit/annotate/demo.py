"""The embedded default: a bundled sample corpus and a generated tiny Llama pair (base and "RL").

- Nothing is downloaded. The tokenizer is a byte-level BPE trained on the sample corpus.
- The base model is randomly initialised with a fixed seed; the RL sibling is the base model with a
  small seeded perturbation, so the two disagree a little, token by token, as an RL-tuned model does.
- These models exercise the pipeline; they say nothing about language.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

SAMPLE_CORPUS = "sample.jsonl"


def sample_corpus_path() -> Path:
    return Path(str(resources.files("remit.annotate") / "data" / SAMPLE_CORPUS))


def corpus_texts(path: Path | None = None) -> list[str]:
    with open(path or sample_corpus_path(), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def train_tokenizer(texts: list[str], vocab_size: int = 1024, extra_special: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Llama-style special tokens, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", *extra_special]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_llama(
    vocab_size: int,
    seed: int,
    *,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 384,
    max_positions: int = 4096,
    tie: bool = False,
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=0.05,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def perturb(model, seed: int, scale: float = 0.3) -> None:
    """Add seeded Gaussian noise of `scale` times each tensor's own std (the "RL" sibling)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=gen) * std * scale)


def make_model_pair(
    out_dir: str | Path,
    *,
    vocab_size: int = 1024,
    seed: int = 1,
    rl_scale: float = 0.3,
    texts: list[str] | None = None,
    **model_kwargs,
) -> tuple[Path, Path]:
    """Write `out_dir/base` and `out_dir/rl` (safetensors + tokenizer); reuse them if already there."""
    out_dir = Path(out_dir)
    base_dir, rl_dir = out_dir / "base", out_dir / "rl"
    if (base_dir / "config.json").exists() and (rl_dir / "config.json").exists():
        return base_dir, rl_dir
    tokenizer = train_tokenizer(texts or corpus_texts(), vocab_size=vocab_size)
    model = tiny_llama(len(tokenizer), seed, **model_kwargs)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    perturb(model, seed + 1000, rl_scale)
    model.save_pretrained(rl_dir)
    tokenizer.save_pretrained(rl_dir)
    return base_dir, rl_dir


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m remit.annotate.demo", description="Write the demo's tiny base/RL model pair (no download)."
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write base/ and rl/ into")
    p.add_argument("--seed", type=int, default=1, help="model seed (default 1)")
    args = p.parse_args(argv)
    base, rl = make_model_pair(args.out, seed=args.seed)
    print(f"base model: {base}\nRL model:   {rl}\nsample corpus: {sample_corpus_path()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
