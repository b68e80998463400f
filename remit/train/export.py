"""Export a remit-train checkpoint as a Hugging Face checkpoint of its own architecture (the flywheel:
score or evaluate it again). The run's config.json is written unchanged.

Runs as one process at TP=1: dist_checkpointing reshards whatever TP the run used.
"""

from __future__ import annotations

import json
from pathlib import Path

from remit.train import cpu_compat, distributed
from remit.train.architecture import read_architecture
from remit.train.checkpoint import load_model_only
from remit.train.convert import gather_full_state, save_hf
from remit.train.folders import check_export_folder, claim_export_folder
from remit.train.model import build_gpt_model, transformer_config


def _layout(run_dir: Path) -> str:
    """The attention backend the run used: Transformer Engine's layer spec names tensors its own way.
    (The local backends, sdpa and dense, share one layout; sdpa loads either.)"""
    from remit.train.attention import resolve_backend
    from remit.train.startup import MODEL_FILE

    path = run_dir / MODEL_FILE
    used = json.loads(path.read_text()).get("attention", "sdpa") if path.exists() else "sdpa"
    if used == "te":
        return resolve_backend("te")  # refuses, naming what is missing, where TE cannot run
    return "sdpa"


def export_checkpoint(
    run_dir: str | Path, out_dir: str | Path, iteration: int | None = None, trust: bool = False
) -> Path:
    from remit.train.startup import HF_TEMPLATE

    run_dir = Path(run_dir)
    template = run_dir / HF_TEMPLATE
    if not (template / "config.json").exists():
        raise FileNotFoundError(f"{template}: missing; --load must be the --save folder of a remit-train run.")
    check_export_folder(Path(out_dir), None, run_dir)  # before any work: never over the user's files
    arch = read_architecture(template)
    attention = _layout(run_dir)
    created = distributed.init(1)
    try:
        cpu_compat.seed_rng(0)
        config = transformer_config(arch, attention=attention)
        model = build_gpt_model(arch, config, max_sequence_length=arch.max_positions, attention=attention)
        it = load_model_only(run_dir, model.to(cpu_compat.device()), iteration, trust=trust)
        full = gather_full_state(model, None)
        claim_export_folder(Path(out_dir))
        out = save_hf(full, template, out_dir)
        print(f"iteration {it} of {run_dir} -> {out}")
        return out
    finally:
        distributed.teardown(created)
