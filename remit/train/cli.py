"""`remit-train`: mid-train a Hugging Face checkpoint on an annotation output with ReMiT weights.

    remit-train --data OUTPUT --weights {none,static,online,shuffled,rho1,external} --init-hf DIR --train-iters N --save DIR
    remit-train --data OUTPUT --weights none --init-config CONFIG.json ...     (random initialisation)
    remit-train export-hf --load RUN_DIR --out DIR [--iteration N]

Launch with torchrun (or the scripts in remit/train/launch/) for data, tensor and pipeline parallelism; a plain
call runs one process. The CLI only parses flags into a `TrainConfig` and calls `train`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from remit.common.errors import run_command
from remit.common.flags import add_arguments, config_from_args, option, option_of
from remit.common.quiet import quiet_libraries
from remit.train.config import TrainConfig


@dataclass
class ExportConfig:
    """`remit-train export-hf`'s flags."""

    load: Path = option(help="the run folder (--save of the training run)", group="export")
    out: Path = option(help="output folder for the HF checkpoint", group="export")
    iteration: int | None = option(None, help="which iter_* to export (default: the latest)", group="export")
    trust_checkpoint: bool = option_of(TrainConfig, "trust_checkpoint", group="export")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remit-train",
        description="Mid-train a Hugging Face checkpoint on ReMiT-weighted shards with Megatron-Core. "
        "Subcommand: `remit-train export-hf --help`.",
    )
    add_arguments(p, TrainConfig)
    _add_verbose(p)
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remit-train export-hf",
        description="Write a checkpoint of a remit-train run as a Hugging Face checkpoint.",
    )
    add_arguments(p, ExportConfig)
    _add_verbose(p)
    return p


def _add_verbose(p: argparse.ArgumentParser) -> None:
    # Not a config field: it changes what is printed, never what is computed.
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Megatron-Core's, torch's and transformers' own warnings (hidden by default)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export-hf":
        args = export_parser().parse_args(argv[1:])
        quiet_libraries(args.verbose)
        export_cfg = config_from_args(ExportConfig, args)

        def export() -> None:
            from remit.train.export import export_checkpoint

            export_checkpoint(export_cfg.load, export_cfg.out, export_cfg.iteration, trust=export_cfg.trust_checkpoint)

        return run_command("remit-train export-hf", export)
    parser = train_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        cfg = config_from_args(TrainConfig, args)
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
