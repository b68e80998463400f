"""Reinforcement learning on the exact-answer reward: a small GRPO loop on a transformers model.

Each step samples `prompts_per_step` RL prompts, draws `group_size` completions of each at
temperature 1, rewards a completion 1 when its "The answer is N." states the true answer and 0
otherwise, and takes the group-normalised reward as the advantage of every token of the completion
(GRPO: A = (r - mean of the group) / (std of the group + 1e-4); a group whose completions all score
the same teaches nothing and has A = 0). The loss is the policy gradient of those advantages,
averaged over all completion tokens of the step (token-level normalisation), with one AdamW update
per batch of rollouts: the samples are on-policy, so the PPO ratio is 1 and needs no clipping. With
`kl_coef` > 0 it adds GRPO's KL penalty to the starting model (the k3 estimator
exp(r) - r - 1, r = log p_ref - log p, per completion token).

This loop exists because it runs on two CPU cores in minutes; TRL's `GRPOTrainer` computes the same
objective (with `beta=0`, one iteration per batch, `loss_type="dapo"`) and is the optional engine
(`--rl-engine trl`, the `flywheel-trl` extra).

`python -m experiments.flywheel.grpo --model DIR --data DATA --out DIR [...]`
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.flywheel.data import parse_answer, read_jsonl
from experiments.flywheel.evaluate import generate, load
from remit.common.atomic import write_json_atomic


@dataclass(frozen=True)
class GRPOConfig:
    """The RL recipe (the same for the base model and for every mid-trained model)."""

    steps: int = 100
    """Optimizer steps (one batch of rollouts each)."""
    prompts_per_step: int = 32
    group_size: int = 8
    """Completions sampled per prompt."""
    lr: float = 1e-4
    """AdamW learning rate (constant after `warmup` steps of linear warm-up)."""
    warmup: int = 3
    max_new_tokens: int = 40
    temperature: float = 1.0
    """Sampling temperature of the rollouts (1: the policy itself; lower temperatures left fewer groups
    with both a right and a wrong completion in the dev pilots)."""
    clip_grad: float = 1.0
    kl_coef: float = 0.0
    """Weight of the KL penalty to the starting model (0: none)."""
    seed: int = 0


def advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """GRPO's group-normalised advantages for rewards laid out group after group."""
    r = rewards.reshape(-1, group_size).astype(np.float64)
    a = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
    return a.reshape(-1)


def _completion_logp(model, prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int):
    """(log-prob of every next token [n, width - 1], mask of the completion tokens among them)."""
    seqs = [p + c for p, c in zip(prompt_ids, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1))
    for i, (p, s) in enumerate(zip(prompt_ids, seqs)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        mask[i, len(p) - 1 : len(s) - 1] = 1.0  # predictions of the completion tokens
    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0], mask


def policy_loss(
    model,
    prompt_ids: list[list[int]],
    completions: list[list[int]],
    adv: np.ndarray,
    pad_id: int,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
):
    """-(sum over completion tokens of A_i * log pi(token) - kl_coef * k3) / number of completion tokens,
    k3 = exp(r) - r - 1 with r = log p_ref - log pi (the penalty needs `ref_logp`, shaped like the log-probs)."""
    logp, mask = _completion_logp(model, prompt_ids, completions, pad_id)
    a = torch.as_tensor(adv, dtype=torch.float32)[:, None]
    per_token = a * logp
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        r = ref_logp - logp
        per_token = per_token - kl_coef * (torch.exp(r) - r - 1)
    return -(per_token * mask).sum() / mask.sum().clamp(min=1.0)


def save_tuned(model, model_dir: Path, out: Path) -> None:
    """Save a model tuned from `model_dir` into `out`, with `model_dir`'s tokenizer files as they were: a
    tuned model must carry the base model's tokenizer exactly (remit-annotate compares their hashes), not
    one with the padding set up for decoding here."""
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for f in Path(model_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name in ("vocab.json", "merges.txt"):
            shutil.copy2(f, out / f.name)


def train_grpo(model_dir: Path, data: Path, out: Path, cfg: GRPOConfig, log_every: int = 5) -> dict[str, Any]:
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, tok = load(model_dir)
    ref = load(model_dir)[0] if cfg.kl_coef > 0 else None
    rows = read_jsonl(data / "rl.jsonl")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(cfg.warmup, 1)))
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = [rows[int(i)] for i in rng.choice(len(rows), cfg.prompts_per_step, replace=False)]
        model.eval()
        torch.manual_seed(cfg.seed * 100_003 + step)  # the sampling of this step
        prompt_ids, comps = generate(
            model,
            tok,
            [r["prompt"] for r in batch],
            max_new_tokens=cfg.max_new_tokens,
            batch_size=len(batch),
            sample=True,
            num_return_sequences=cfg.group_size,
            temperature=cfg.temperature,
        )
        texts = tok.batch_decode(comps, skip_special_tokens=True)
        gold = [r["answer"] for r in batch for _ in range(cfg.group_size)]
        rewards = np.array([float(parse_answer(t) == g) for t, g in zip(texts, gold)])
        adv = advantages(rewards, cfg.group_size)
        ref_logp = None
        if ref is not None:
            with torch.no_grad():
                ref_logp = _completion_logp(ref, prompt_ids, comps, tok.eos_token_id)[0]
        model.train()
        loss = policy_loss(model, prompt_ids, comps, adv, tok.eos_token_id, ref_logp, cfg.kl_coef)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad))
        opt.step()
        sched.step()
        live = float(np.mean(rewards.reshape(-1, cfg.group_size).std(1) > 0))
        record = {
            "step": step,
            "reward": float(rewards.mean()),
            "groups_with_signal": live,
            "completion_tokens": float(np.mean([len(c) for c in comps])),
            "loss": float(loss.detach()),
            "grad_norm": grad_norm,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if step % log_every == 0 or step == cfg.steps:
            print(
                f"grpo step {step}/{cfg.steps} | reward {record['reward']:.3f} | groups with signal {live:.2f} | "
                f"{record['completion_tokens']:.1f} tok | {record['seconds']:.0f}s",
                flush=True,
            )
    save_tuned(model, model_dir, out)
    summary = {"config": asdict(cfg), "from": str(model_dir), "history": history, "seconds": time.perf_counter() - t0}
    write_json_atomic(out / "grpo.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.flywheel.grpo", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="HF model folder to start from")
    p.add_argument("--data", type=Path, required=True, help="the experiment's data folder (rl.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="folder for the tuned model")
    p.add_argument("--config", type=str, default="{}", help="GRPOConfig fields as JSON")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = GRPOConfig(**json.loads(args.config))
    train_grpo(args.model, args.data, args.out, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
