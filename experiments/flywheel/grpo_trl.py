"""The same RL recipe through TRL's `GRPOTrainer` (optional: `pip install -e .[flywheel-trl]`).

Settings that make it the objective of `grpo.py`: `num_generations = group_size` completions per
prompt, `beta=0` (no KL penalty), one optimisation pass per batch of rollouts (`num_iterations=1`, so
the importance ratio is 1), token-level normalisation (`loss_type="dapo"`), group-normalised rewards,
the same exact-answer reward, sampling temperature, learning rate, warm-up and gradient clip.

`python -m experiments.flywheel.grpo_trl --model DIR --data DATA --out DIR [--config JSON]`
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from experiments.flywheel.data import parse_answer, read_jsonl
from experiments.flywheel.grpo import GRPOConfig
from remit.common.atomic import write_text_atomic
from remit.common.requires import require


def exact_answer_reward(completions: list[str], answer: list[int], **_: object) -> list[float]:
    return [float(parse_answer(c) == a) for c, a in zip(completions, answer)]


def train_grpo_trl(model_dir: Path, data: Path, out: Path, cfg: GRPOConfig) -> dict:
    with require("flywheel-trl", "--rl-engine trl"):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig as TRLConfig
        from trl import GRPOTrainer

    rows = read_jsonl(data / "rl.jsonl")
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    args = TRLConfig(
        output_dir=str(out / "trl"),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
        num_generations=cfg.group_size,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup,
        max_grad_norm=cfg.clip_grad,
        weight_decay=0.0,
        adam_beta2=0.99,
        beta=0.0,
        num_iterations=1,
        loss_type="dapo",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=exact_answer_reward, args=args, train_dataset=ds, processing_class=tok
    )
    t0 = time.perf_counter()
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out)
    for f in Path(model_dir).iterdir():  # the base model's tokenizer files, unchanged
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, out / f.name)
    shutil.rmtree(out / "trl", ignore_errors=True)
    summary = {
        "config": asdict(cfg),
        "engine": "trl",
        "from": str(model_dir),
        "history": trainer.state.log_history,
        "seconds": time.perf_counter() - t0,
    }
    write_text_atomic(out / "grpo.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.flywheel.grpo_trl", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=str, default="{}", help="GRPOConfig fields as JSON")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_grpo_trl(args.model, args.data, args.out, GRPOConfig(**json.loads(args.config)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
