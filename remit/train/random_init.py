"""Random initialisation from a Hugging Face Llama config (`remit-train --init-config`).

- The weights are those of ``LlamaForCausalLM(config)`` built by transformers with the run's seed
  (transformers' own initialiser and `initializer_range`), then converted like any checkpoint, so every
  tensor-parallel rank holds its slice of one and the same model.
- A random model has no tokenizer of its own. The run's HF template (config + tokenizer, used by
  `--export-hf`) takes the tokenizer files from the config's folder when it holds them, else from the
  folder the output's manifest records as its tokenizer; the preflight then checks their hash against
  the output's, as for any checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

#: Tokenizer files copied into the run's HF template (a subset of `model.TEMPLATE_FILES`).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def config_file(path: str | Path) -> Path:
    """The config.json that `--init-config` names: the file itself, or config.json inside a folder."""
    path = Path(path)
    found = path / "config.json" if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(
            f"--init-config {path}: no such file{' (the folder holds no config.json)' if path.is_dir() else ''}; "
            "pass a Hugging Face Llama config.json or a folder holding one."
        )
    return found


def read_config(path: str | Path) -> dict[str, Any]:
    found = config_file(path)
    try:
        cfg = json.loads(found.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--init-config {found}: not valid JSON ({e}); pass a Hugging Face config.json.") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"--init-config {found}: not a JSON object; pass a Hugging Face config.json.")
    return cfg


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def prepare_template(init_config: str | Path, manifest_tokenizer: dict[str, Any], dst: str | Path) -> Path:
    """Write the run's HF template: the config plus the tokenizer files (see the module docstring)."""
    src_cfg = config_file(init_config)
    dst = Path(dst)
    recorded = Path(str(manifest_tokenizer.get("path", "")))
    if _has_tokenizer(src_cfg.parent):
        tok_dir = src_cfg.parent
    elif manifest_tokenizer.get("path") and _has_tokenizer(recorded):
        tok_dir = recorded
    else:
        raise FileNotFoundError(
            f"--init-config {init_config}: no tokenizer beside the config, and the output's manifest records "
            f"tokenizer folder {recorded or '(none)'}, which holds none. Put the tokenizer files (tokenizer.json, "
            "tokenizer_config.json, ...) of the output's tokenizer next to the config."
        )
    dst.mkdir(parents=True, exist_ok=True)
    if src_cfg.resolve() != (dst / "config.json").resolve():
        shutil.copy2(src_cfg, dst / "config.json")
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists() and (tok_dir / name).resolve() != (dst / name).resolve():
            shutil.copy2(tok_dir / name, dst / name)
    return dst


def random_hf_state(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a freshly initialised transformers Llama (float32), seeded with `seed`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(hf_cfg)
    finally:
        torch.random.set_rng_state(state)
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
