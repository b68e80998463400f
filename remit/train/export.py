"""Export a remit-train checkpoint as a Hugging Face Llama (the flywheel: score or evaluate it again).

Runs as one process at TP=1: dist_checkpointing reshards whatever TP the run used.
"""

from __future__ import annotations

from pathlib import Path

from remit.train import cpu_compat, distributed
from remit.train.checkpoint import load_model_only
from remit.train.convert import gather_full_state, save_hf
from remit.train.model import build_gpt_model, llama_shape, read_hf_config, transformer_config


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, iteration: int | None = None) -> Path:
    from remit.train.trainer import HF_TEMPLATE

    run_dir = Path(run_dir)
    template = run_dir / HF_TEMPLATE
    if not (template / "config.json").exists():
        raise FileNotFoundError(f"{template}: missing; --load must be the --save folder of a remit-train run.")
    shape = llama_shape(read_hf_config(template), str(template / "config.json"))
    created = distributed.init(1)
    try:
        cpu_compat.seed_rng(0)
        model = build_gpt_model(shape, transformer_config(shape), max_sequence_length=shape.max_positions)
        it = load_model_only(run_dir, model.to(cpu_compat.device()), iteration)
        out = save_hf(gather_full_state(model, None), template, out_dir)
        print(f"iteration {it} of {run_dir} -> {out}")
        return out
    finally:
        distributed.teardown(created)
