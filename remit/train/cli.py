"""`remit-train`: mid-train a Hugging Face checkpoint on an annotation output with ReMiT weights.

    remit-train --data OUTPUT --weights {none,static,online,shuffled,rho1} --init-hf DIR --train-iters N --save DIR
    remit-train --data OUTPUT --weights none --init-config CONFIG.json ...     (random initialisation)
    remit-train export-hf --load RUN_DIR --out DIR [--iteration N]

Launch with torchrun (or the scripts in remit/train/launch/) for data, tensor and pipeline parallelism; a plain
call runs one process. The CLI only parses flags into a `TrainConfig` and calls `train`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from remit.common.errors import run_command
from remit.common.quiet import quiet_libraries
from remit.train.config import (
    ATTENTION_BACKENDS,
    CENTER_MODES,
    DECAY_STYLES,
    RECOMPUTE_GRANULARITIES,
    RECOMPUTE_METHODS,
    WEIGHT_MODES,
    TrainConfig,
)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remit-train",
        description="Mid-train a Hugging Face checkpoint on ReMiT-weighted shards with Megatron-Core. "
        "Subcommand: `remit-train export-hf --help`.",
    )
    # --- data ---
    p.add_argument("--data", type=Path, required=True, help="annotation output folder (manifest.json + shards)")
    p.add_argument(
        "--weights",
        choices=WEIGHT_MODES,
        default="static",
        help="none: plain next-token loss; static: stored weights; online: the paper's rule with the "
        "current model's log-prob; shuffled: the stored weights permuted within each row (a control); "
        "rho1: Rho-1, the top --keep-ratio tokens of each micro-batch by log p_RL - log p_theta (default: static)",
    )
    p.add_argument(
        "--keep-ratio",
        type=float,
        default=0.6,
        help="rho1: fraction of each micro-batch's valid tokens kept, in (0, 1] (default: 0.6)",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help="online: clip half-width, weights in [1-eps, 1+eps] (default: the manifest's)",
    )
    p.add_argument(
        "--center",
        choices=CENTER_MODES,
        default=None,
        help="online: centre the discrepancy per row or per segment (default: the manifest's)",
    )
    p.add_argument(
        "--shuffle-shards",
        type=int,
        default=8,
        help="shards mixed in one shuffle window, also shards cached per rank (default: 8)",
    )
    p.add_argument(
        "--skip-validate",
        action="store_true",
        help="skip the full validation of the output at start (shards are still checksum-verified)",
    )
    # --- model and checkpoints ---
    p.add_argument(
        "--init-hf",
        type=Path,
        default=None,
        help="Hugging Face checkpoint to start from: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3 or SmolLM3",
    )
    p.add_argument(
        "--init-config",
        type=Path,
        default=None,
        help="start from random weights: an HF config.json of a supported architecture (or a folder with one), "
        "seeded by --seed; the tokenizer comes from that folder or from the one the output's manifest records",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default="auto",
        help="document-masked attention: sdpa (memory linear in seq-len), te (Transformer Engine, packed), "
        "dense (reference, S x S scores), auto = te where Transformer Engine runs, else sdpa (default: auto)",
    )
    p.add_argument("--save", type=Path, required=True, help="run folder: checkpoints, metrics.jsonl, HF template")
    p.add_argument("--load", type=Path, default=None, help="checkpoint folder to resume from (default: --save)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint whose pickled metadata does not match the hash remit recorded (a checkpoint is "
        "code: only for checkpoints from a trusted source)",
    )
    p.add_argument(
        "--save-interval",
        type=int,
        default=None,
        help="save every N iterations; always at the end (default: only at the end)",
    )
    p.add_argument("--export-hf", type=Path, default=None, help="after training, write the model as HF here")
    # --- schedule and optimiser ---
    p.add_argument("--train-iters", type=int, required=True, help="optimizer steps in total")
    p.add_argument(
        "--override-schedule",
        action="store_true",
        help="on resume, continue from the checkpoint's step under the new schedule flags instead of refusing them",
    )
    p.add_argument("--micro-batch-size", type=int, default=1, help="sequences per forward pass per rank")
    p.add_argument(
        "--global-batch-size",
        type=int,
        default=None,
        help="sequences per optimizer step over all ranks (default: micro batch x DP size)",
    )
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    p.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the decay (default: 0)")
    p.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up iterations (default: 0)")
    p.add_argument(
        "--lr-decay-iters", type=int, default=None, help="decay length in iterations (default: --train-iters)"
    )
    p.add_argument("--lr-decay-style", choices=DECAY_STYLES, default="cosine", help="decay shape (default: cosine)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.95)
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clip, 0 = off (default: 1.0)")
    p.add_argument(
        "--seed",
        type=int,
        default=1234,
        help="seed of the data order, of --init-config's weights and of shuffled's permutations (default: 1234)",
    )
    # --- parallelism, precision, memory ---
    p.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP size (default: 1)")
    p.add_argument(
        "--pipeline-model-parallel-size",
        type=int,
        default=1,
        help="pipeline stages; must divide the layer count; DP size = world / (TP x PP) (default: 1)",
    )
    p.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="with TP > 1: also split norms and residuals along the sequence over the TP ranks",
    )
    p.add_argument(
        "--use-distributed-optimizer",
        action="store_true",
        help="shard fp32 main parameters, gradients and Adam state over the data-parallel ranks",
    )
    p.add_argument(
        "--overlap-grad-reduce",
        action="store_true",
        help="reduce gradients over data-parallel ranks bucket by bucket during the backward pass",
    )
    p.add_argument(
        "--recompute-granularity",
        choices=RECOMPUTE_GRANULARITIES,
        default=None,
        help="activation recompute: selective = the core attention of every layer, full = whole layers (default: off)",
    )
    p.add_argument(
        "--recompute-method",
        choices=RECOMPUTE_METHODS,
        default=None,
        help="full only: uniform = checkpoint every group of --recompute-num-layers layers, block = only the "
        "first --recompute-num-layers layers of each stage (default: uniform)",
    )
    p.add_argument(
        "--recompute-num-layers",
        type=int,
        default=None,
        help="full only: layers per group (uniform) or per stage (block) (default: 1)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 parameters and compute, fp32 main parameters in the optimizer (GPUs; fp32 is faster on CPUs)",
    )
    # --- logging ---
    p.add_argument("--log-interval", type=int, default=1, help="progress line every N steps (default: 1)")
    _add_verbose(p)
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remit-train export-hf",
        description="Write a checkpoint of a remit-train run as a Hugging Face checkpoint.",
    )
    p.add_argument("--load", type=Path, required=True, help="the run folder (--save of the training run)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the HF checkpoint")
    p.add_argument("--iteration", type=int, default=None, help="which iter_* to export (default: the latest)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="load a checkpoint whose pickled files do not match the hashes remit recorded (a checkpoint is code)",
    )
    _add_verbose(p)
    return p


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Megatron-Core's, torch's and transformers' own warnings (hidden by default)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in vars(args).items() if k != "verbose"})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export-hf":
        args = export_parser().parse_args(argv[1:])
        quiet_libraries(args.verbose)

        def export() -> None:
            from remit.train.export import export_checkpoint

            export_checkpoint(args.load, args.out, args.iteration, trust=args.trust_checkpoint)

        return run_command("remit-train export-hf", export)
    parser = train_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        cfg = config_from_args(args)
    except ValueError as e:  # one line naming the field, the value and the fix (not the whole usage)
        print(f"remit-train: error: {e}", file=sys.stderr, flush=True)
        return 2

    # PreflightError, ShardError, ArchitectureError and NonFiniteStepError are ValueErrors: one line each.
    def run() -> None:
        from remit.train.trainer import train

        train(cfg)

    return run_command("remit-train", run)


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__: keep this guard
    raise SystemExit(main())
