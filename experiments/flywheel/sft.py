"""The non-RL reference of equal cost: the base model fine-tuned with cross-entropy on the correct
reference solutions of the RL prompts.

It is the `online-sft` arm's control for "is it the RL model that helps, or any tuned reference?". It
takes GRPO's recipe (`GRPOConfig`) wherever the two share a meaning: the same number of optimizer steps,
prompts per step (drawn the same way from rl.jsonl, with the same seed), AdamW settings, learning rate
and warm-up, and gradient clipping. The loss is the mean next-token loss over the solution tokens and
the closing EOS of the step's prompts, given the prompt (token-level normalisation, as GRPO's).
Sampling settings (group size, temperature, KL) have no meaning here.

`python -m experiments.flywheel.sft --model DIR --data DATA --out DIR [--config JSON]`
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.flywheel.data import read_jsonl
from experiments.flywheel.evaluate import load, solution_sequences
from experiments.flywheel.grpo import GRPOConfig, save_tuned
from remit.common.atomic import write_json_atomic


def solution_batch(tok, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, label mask) for prompt + " " + solution + EOS, right-padded; the label
    mask marks the predictions of the solution tokens and of the EOS (the sequences `solution_loss` scores)."""
    ids, att, starts, lengths = solution_sequences(tok, rows)
    mask = torch.zeros((ids.shape[0], ids.shape[1] - 1))
    for i, (start, n) in enumerate(zip(starts, lengths)):
        mask[i, start - 1 : n - 1] = 1.0
    return ids, att, mask


def sft_loss(model, ids: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return -(logp * mask).sum() / mask.sum().clamp(min=1.0)


def train_sft(model_dir: Path, data: Path, out: Path, cfg: GRPOConfig, log_every: int = 10) -> dict[str, Any]:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, tok = load(model_dir)
    rows = read_jsonl(data / "rl.jsonl")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(1, cfg.steps + 1):
        batch = [rows[int(i)] for i in rng.choice(len(rows), cfg.prompts_per_step, replace=False)]
        loss = sft_loss(model, *solution_batch(tok, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
        opt.step()
        sched.step()
        record = {"step": step, "loss": float(loss.detach()), "grad_norm": grad_norm,
                  "seconds": time.perf_counter() - t0}  # fmt: skip
        history.append(record)
        if step % log_every == 0 or step == cfg.steps:
            print(f"sft step {step}/{cfg.steps} | loss {record['loss']:.4f} | {record['seconds']:.0f}s", flush=True)
    save_tuned(model, model_dir, out)
    summary = {"config": asdict(cfg), "from": str(model_dir), "history": history, "seconds": time.perf_counter() - t0}
    write_json_atomic(out / "sft.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.flywheel.sft", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="HF model folder to start from")
    p.add_argument("--data", type=Path, required=True, help="the experiment's data folder (rl.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="folder for the tuned model")
    p.add_argument("--config", type=str, default="{}", help="GRPOConfig fields as JSON (the RL recipe)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_sft(args.model, args.data, args.out, GRPOConfig(**json.loads(args.config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
