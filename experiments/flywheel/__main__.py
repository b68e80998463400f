"""`python -m experiments.flywheel [--quick] [--arms A,B] [--seeds 1,2,3] [--out DIR]`: the whole flywheel.

Run through `./scripts/flywheel.sh`, which first sets up the environment. See README.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from experiments.flywheel.config import (
    ARMS,
    CONFIG_FILE,
    FULL,
    QUICK,
    ExperimentConfig,
    changed_fields,
    check,
    record,
    recorded,
    set_field,
)
from experiments.flywheel.data import CONFIRM
from experiments.flywheel.evaluate import ALL_EVAL_SPLITS, EVAL_SPLITS
from remit.common.errors import run_command


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def arm_list(text: str) -> tuple[str, ...]:
    arms = tuple(a for a in text.split(",") if a)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    return arms


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel", description="The ReMiT flywheel in miniature, with controls and seeds."
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and one seed: a smoke test of every stage (minutes)"
    )
    p.add_argument(
        "--arms",
        type=arm_list,
        default=None,
        help=f"mid-training arms (default: the five main ones); any of {', '.join(ARMS)}",
    )
    p.add_argument(
        "--seeds", type=int_list, default=None, help="mid-training seeds, e.g. 1,2,3 (default: 1 to 5; quick: 1)"
    )
    p.add_argument(
        "--post-rl-arms",
        type=arm_list,
        default=None,
        help="arms whose mid-trained models get the second RL turn (default: none,online)",
    )
    p.add_argument(
        "--post-rl-seeds", type=int_list, default=None, help="seeds of the second RL turn (default: 1,2; quick: 1)"
    )
    p.add_argument(
        "--eval-splits",
        default=",".join(EVAL_SPLITS),
        help=f"evaluation splits, of {', '.join(ALL_EVAL_SPLITS)} (pilots tuning on dev pass: dev; with {CONFIRM}, "
        "the base, RL and SFT models are evaluated on every split into eval/refs/)",
    )
    p.add_argument(
        "--final-only", action="store_true", help="evaluate only the last checkpoint of each mid-training run"
    )
    p.add_argument(
        "--engine", choices=("vllm", "hf"), default=None, help="remit-annotate engine (default vllm; --quick: hf)"
    )
    p.add_argument(
        "--rl-engine",
        choices=("own", "trl"),
        default=None,
        help="GRPO: the experiment's loop (default) or TRL's GRPOTrainer",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one configuration field (config.py), e.g. data.noise_rate=0.5, mid.iters=160, shape.hidden=192, "
        "eps=0.5 (repeatable; for ablations, with their own --out)",
    )
    p.add_argument("--out", type=Path, default=Path("flywheel-output"), help="output folder (default flywheel-output/)")
    return p  # fmt: skip


def configure(args: argparse.Namespace) -> ExperimentConfig:
    """The configuration the flags ask for; ValueError naming a bad --set value."""
    base = QUICK if args.quick else FULL
    cfg = replace(
        base,
        arms=args.arms or base.arms,
        seeds=args.seeds or base.seeds,
        post_rl_arms=args.post_rl_arms or base.post_rl_arms,
        post_rl_seeds=args.post_rl_seeds or base.post_rl_seeds,
        engine=args.engine or base.engine,
        rl_engine=args.rl_engine or base.rl_engine,
    )
    for assignment in args.set:
        cfg = set_field(cfg, assignment)
    check(cfg)
    return cfg


def claim_output(out: Path, cfg: ExperimentConfig, quick: bool) -> None:
    """Record the configuration in `out`/config.json; refuse a folder that holds another run (its finished
    stages are reused, so they must have been made with this configuration)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / CONFIG_FILE).exists():
        before = recorded(out)
        if before["quick"] != quick:
            raise ValueError(f"{out} holds a {'quick' if not quick else 'full'} run; use another --out")
        changed = changed_fields(before["config"], cfg)
        if changed:
            raise ValueError(
                f"{out} holds a run with another configuration ({', '.join(changed)} differ); "
                "use another --out, or the --set values it was made with (its config.json)"
            )
    record(out, cfg, quick)


def run(args: argparse.Namespace) -> None:
    from experiments.flywheel.pipeline import Pipeline

    cfg = configure(args)
    splits = tuple(s for s in args.eval_splits.split(",") if s)
    bad = [s for s in splits if s not in ALL_EVAL_SPLITS]
    if bad:
        raise ValueError(f"--eval-splits: unknown split(s) {bad}; choose from {', '.join(ALL_EVAL_SPLITS)}")
    out = args.out
    claim_output(out, cfg, args.quick)
    pipe = Pipeline(cfg, out, splits, final_only=args.final_only)
    t0 = time.perf_counter()
    pipe.stage_data()
    pipe.stage_data_extra()
    pipe.stage_pretrain()
    pipe.stage_rl()
    pipe.stage_eval_base_rl()
    pipe.stage_annotate()
    pipe.stage_diagnose()
    pipe.stage_controls(cfg.arms)
    if CONFIRM in splits:
        pipe.stage_eval_refs(ALL_EVAL_SPLITS)
    pipe.stage_mid(cfg.arms, cfg.seeds)
    pipe.stage_post_rl(tuple(a for a in cfg.post_rl_arms if a in cfg.arms), cfg.post_rl_seeds)
    pipe.stage_report()
    print(f"flywheel: finished in {(time.perf_counter() - t0) / 60:.1f} min; report {out / 'results.md'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from experiments.flywheel.pipeline import StageError

    return run_command("flywheel", lambda: run(args), (StageError,))


if __name__ == "__main__":
    raise SystemExit(main())
