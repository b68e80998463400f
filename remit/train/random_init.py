"""Random initialisation from a Hugging Face config (`remit-train --init-config`).

- Any architecture `remit.train.architecture` supports (Llama, Mistral, Qwen2, Qwen3, SmolLM3): the
  config is checked like a checkpoint's (others are refused by name, before anything is built).
- The weights are those of the config's transformers model class, built by transformers with the
  run's seed (its own initialiser and `initializer_range`) in float32, then converted like any
  checkpoint, so every tensor-parallel rank and pipeline stage holds its part of one and the same model.
- A random model has no tokenizer of its own. The run's HF template (config + tokenizer, used by
  `--export-hf`) takes the tokenizer files from the config's folder when it holds them, else from the
  folder the output's manifest records as its tokenizer; the preflight then checks their hash against
  the output's, as for any checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from remit.train.architecture import TEMPLATE_FILES, Architecture, read_hf_config

#: Tokenizer files copied into the run's HF template (the template files but the configs).
TOKENIZER_FILES = tuple(n for n in TEMPLATE_FILES if n not in ("config.json", "generation_config.json"))


def config_file(path: str | Path) -> Path:
    """The config.json that `--init-config` names: the file itself, or config.json inside a folder."""
    path = Path(path)
    found = path / "config.json" if path.is_dir() else path
    if not found.is_file():
        raise FileNotFoundError(
            f"--init-config {path}: no such file{' (the folder holds no config.json)' if path.is_dir() else ''}; "
            "pass a Hugging Face config.json or a folder holding one."
        )
    return found


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


def random_hf_state(template: str | Path, arch: Architecture, seed: int) -> dict[str, torch.Tensor]:
    """The float32 state dict of a freshly initialised transformers model of `template`'s config.json
    (already checked as `arch`), seeded with `seed`; the global RNG state is left as it was."""
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = read_hf_config(template)
    hf_cfg = AutoConfig.for_model(arch.model_type, **{k: v for k, v in raw.items() if k != "model_type"})
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
