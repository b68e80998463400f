"""Evaluation of a Hugging Face checkpoint on the task: exact-match accuracy and loss on clean solutions.

- Accuracy: greedy decoding (transformers `generate`, `do_sample=False`, the same settings for every
  checkpoint) from the prompt "Question: ...\\nAnswer:"; a problem counts as solved when the first
  "The answer is N." of the completion states the true answer.
- Loss: the mean next-token loss (nats per token) on the held-out problems' correct worked solutions,
  given their prompt; solution tokens and the closing EOS only.

`python -m experiments.flywheel.evaluate` evaluates model folders, or every saved iteration of a
`remit-train` run (exported with remit's own exporter first), and writes one JSON file.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.flywheel.data import parse_answer, read_jsonl
from remit.common.atomic import write_json_atomic

EVAL_SPLITS = ("dev", "heldout", "heldout_templates")
#: Every split the evaluation can read: the first ones and the confirmatory split (data.extra_splits).
ALL_EVAL_SPLITS = (*EVAL_SPLITS, "heldout_confirm")


def load(model_dir: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, tok


@torch.no_grad()
def generate(
    model,
    tok,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 128,
    sample: bool = False,
    num_return_sequences: int = 1,
    temperature: float = 1.0,
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, completion ids up to and including the first EOS) for every prompt (and sample)."""
    prompt_ids, completions = [], []
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_k=0 if sample else None,
            top_p=1.0 if sample else None,
            num_return_sequences=num_return_sequences,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
        width = enc["input_ids"].shape[1]
        for i, row in enumerate(out):
            src = i // num_return_sequences
            mask = enc["attention_mask"][src].bool()
            prompt_ids.append(enc["input_ids"][src][mask].tolist())
            gen = row[width:].tolist()
            if tok.eos_token_id in gen:
                gen = gen[: gen.index(tok.eos_token_id) + 1]
            completions.append(gen)
    return prompt_ids, completions


def accuracy(model, tok, rows: list[dict[str, Any]], max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    _, comps = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, batch_size=batch_size)
    texts = tok.batch_decode(comps, skip_special_tokens=True)
    correct = [parse_answer(t) == r["answer"] for t, r in zip(texts, rows)]
    by_steps: dict[str, list[int]] = {}
    for c, r in zip(correct, rows):
        by_steps.setdefault(str(r["steps"]), []).append(int(c))
    return {
        "accuracy": sum(correct) / max(len(rows), 1),
        "n": len(rows),
        "accuracy_by_steps": {k: sum(v) / len(v) for k, v in sorted(by_steps.items())},
        "correct": [int(c) for c in correct],
        "examples": [{"prompt": r["prompt"], "completion": t} for r, t in list(zip(rows, texts))[:3]],
    }


def solution_sequences(tok, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """(input ids, attention mask, prompt lengths, sequence lengths) of prompt + " " + solution + EOS for
    every row, right-padded: positions start at 0 for every row."""
    seqs, starts = [], []
    for r in rows:
        p = tok(r["prompt"])["input_ids"]
        seqs.append(p + tok(" " + r["solution"])["input_ids"] + [tok.eos_token_id])
        starts.append(len(p))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.eos_token_id)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
    return ids, att, starts, [len(s) for s in seqs]


@torch.no_grad()
def solution_loss(model, tok, rows: list[dict[str, Any]], batch_size: int = 64) -> float:
    """Mean NLL per solution token (plus EOS) given the prompt, over all rows."""
    total, count = 0.0, 0
    for first in range(0, len(rows), batch_size):
        ids, att, starts, lengths = solution_sequences(tok, rows[first : first + batch_size])
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        for i, (start, n) in enumerate(zip(starts, lengths)):
            total -= float(logp[i, start - 1 : n - 1].sum())
            count += n - start
    return total / max(count, 1)


def evaluate_model(
    model_dir: str | Path, data: Path, splits: tuple[str, ...], max_new_tokens: int, batch_size: int, limit: int = 0
) -> dict[str, Any]:
    model, tok = load(model_dir)
    out: dict[str, Any] = {"model": str(model_dir)}
    for split in splits:
        rows = read_jsonl(data / f"{split}.jsonl")
        # Decoding dominates the cost: accuracy on the first `limit` problems, the loss (one forward
        # pass per batch) on all of them.
        res = accuracy(model, tok, rows[:limit] if limit else rows, max_new_tokens, batch_size)
        res["loss"] = solution_loss(model, tok, rows)
        res["loss_n"] = len(rows)
        out[split] = res
    return out


def export_iterations(run: Path, dest: Path, last_only: bool = False) -> list[tuple[int, Path]]:
    """Export every saved iteration of a remit-train run (remit's exporter), or its last one; return
    (iteration, folder) pairs."""
    from remit.train import cpu_compat
    from remit.train.export import export_checkpoint

    its = sorted(int(p.name.split("_")[1]) for p in run.glob("iter_*") if p.is_dir())
    its = its[-1:] if last_only else its
    done = []
    for it in its:
        folder = dest / f"iter_{it:07d}"
        if not (folder / "model.safetensors").exists():
            export_checkpoint(run, folder, it)
        done.append((it, folder))
    cpu_compat.remove()  # the CPU layer slows every torch call: off again before decoding
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.flywheel.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the experiment's data folder (split JSONL files)")
    p.add_argument("--model", type=Path, action="append", default=[], help="HF model folder (repeatable)")
    p.add_argument("--run", type=Path, action="append", default=[], help="remit-train run: every saved iteration")
    p.add_argument("--splits", default=",".join(EVAL_SPLITS), help="comma-separated splits to evaluate")
    p.add_argument("--limit", type=int, default=0, help="first N problems of each split (0: all)")
    p.add_argument(
        "--curve-splits",
        default=None,
        help="splits for a run's intermediate iterations (default: --splits); the last iteration gets --splits",
    )
    p.add_argument("--final-only", action="store_true", help="a run's last saved iteration only (no curves)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, required=True, help="writes NAME.json per model folder or run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = tuple(s for s in args.splits.split(",") if s)
    curve_splits = tuple(s for s in args.curve_splits.split(",") if s) if args.curve_splits else splits
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Export every run first: the exporter installs remit's CPU layer for Megatron, removed before decoding.
    exported = {run: export_iterations(run, run / "hf_steps", args.final_only) for run in args.run}
    targets: list[tuple[str, Sequence[tuple[int | None, Path]]]] = [(m.name, [(None, m)]) for m in args.model]
    targets += [(run.name, exported[run]) for run in args.run]
    for name, items in targets:
        t0 = time.perf_counter()
        results: dict[str, Any] = {"splits": list(splits), "models": []}
        last = max((it or 0) for it, _ in items)
        for it, folder in items:
            these = splits if (it or 0) == last else curve_splits
            res = evaluate_model(folder, args.data, these, args.max_new_tokens, args.batch_size, args.limit)
            res["iteration"] = it
            results["models"].append(res)
            summary = ", ".join(f"{s} {res[s]['accuracy']:.3f} (loss {res[s]['loss']:.3f})" for s in these)
            print(f"eval {folder}: {summary}", flush=True)
        results["seconds"] = time.perf_counter() - t0
        write_json_atomic(args.out_dir / f"{name}.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
