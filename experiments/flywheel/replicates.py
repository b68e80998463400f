"""Pool runs of the experiment made with different base models (`--set base_seed=N`, one --out each).

`python -m experiments.flywheel.replicates OUT [OUT ...] [--arms online,shuffled] [--split heldout]`

Per output folder: the base and RL accuracy, each arm's mean over seeds and its paired difference
against `none` (95% t over seeds). Then, over all folders:
- per (base, seed) pair: the differences against `none` pooled, with a t-interval that treats every
  pair as independent (it ignores that pairs of one base share that base);
- per base: the mean difference of each base, with a t-interval over bases (few bases: wide, but it
  is the interval that counts the variation between base models);
- the paired bootstrap over problems, pooled over every (base, seed) pair;
- the held-out loss on the clean solutions, arm minus `none`, per base and pooled the same two ways
  (it still moves where accuracy is near its ceiling);
- the second RL turn, where folders have one: arm minus `none` before and after it, per (base, seed)
  pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from experiments.flywheel.__main__ import arm_list, int_list
from experiments.flywheel.config import CONFIG_FILE, config_differences, recorded
from experiments.flywheel.evaluate import EVAL_SPLITS
from experiments.flywheel.report import collect, format_ci, format_pm, mean_std, paired_bootstrap, paired_t
from remit.common.errors import run_command


def pool(outs: list[Path], arms: tuple[str, ...], split: str, seeds: tuple[int, ...] = ()) -> dict[str, Any]:
    """The per-folder and pooled differences of `arms` against `none` on `split` (fractions): in each
    folder, over the seeds run for both the arm and `none` (and among `seeds`, when given)."""
    folders: list[dict[str, Any]] = []
    first = None
    for out in outs:
        res = collect(out, (split,))
        cfg = recorded(out)["config"]
        first = first or cfg
        differs = [k for k in config_differences(first, cfg) if k != "base_seed"]
        mid = res["mid"]
        lacking = sorted(f"{arm}-s{s}" for arm, runs in mid.items() for s, m in runs.items() if split not in m)
        if lacking:
            raise ValueError(f"{out}: {', '.join(lacking)} not evaluated on {split}; choose another --split")
        none = {s: m for s, m in mid.get("none", {}).items() if not seeds or s in seeds}
        if not none:
            raise ValueError(f"{out}: no `none` runs to compare with; run that folder with --arms none,...")
        row: dict[str, Any] = {
            "out": str(out),
            "base_seed": cfg.get("base_seed", 0),
            "differs": differs,
            "base": res["base"][split]["accuracy"] if "base" in res else None,
            "rl": res["rl"][split]["accuracy"] if "rl" in res else None,
            "none": mean_std([m[split]["accuracy"] for m in none.values()]),
            "arms": {},
        }
        for arm in arms:
            common = sorted(set(mid.get(arm, {})) & set(none))
            if not common:
                continue
            diffs = [mid[arm][s][split]["accuracy"] - mid["none"][s][split]["accuracy"] for s in common]
            loss_diffs = [mid[arm][s][split]["loss"] - mid["none"][s][split]["loss"] for s in common]
            row["arms"][arm] = {
                "seeds": common,
                "accuracy": mean_std([mid[arm][s][split]["accuracy"] for s in common]),
                "diffs": diffs,
                "vs_none": paired_t(diffs),
                "loss_diffs": loss_diffs,
                "loss_vs_none": paired_t(loss_diffs),
                "correct": [np.asarray(mid[arm][s][split]["correct"]) for s in common],
                "correct_none": [np.asarray(mid["none"][s][split]["correct"]) for s in common],
            }
        post = res["post_rl"]
        row["post_rl"] = {
            arm: [
                {"seed": s, "before": mid[arm][s][split]["accuracy"], "after": post[arm][s][split]["accuracy"],
                 "before_none": mid["none"][s][split]["accuracy"], "after_none": post["none"][s][split]["accuracy"]}
                for s in sorted(set(post.get(arm, {})) & set(post.get("none", {})) & set(mid.get(arm, {})) & set(none))
            ]
            for arm in arms
        }  # fmt: skip
        folders.append(row)
    pooled: dict[str, Any] = {}
    for arm in arms:
        have = [f["arms"][arm] for f in folders if arm in f["arms"]]
        if not have:
            continue
        pairs = [d for a in have for d in a["diffs"]]
        per_base = [float(np.mean(a["diffs"])) for a in have]
        pooled[arm] = {
            "bases": len(have),
            "pairs": paired_t(pairs),
            "per_base": paired_t(per_base),
            "bootstrap": paired_bootstrap(
                [c for a in have for c in a["correct"]], [c for a in have for c in a["correct_none"]]
            ),
            "loss_pairs": paired_t([d for a in have for d in a["loss_diffs"]]),
            "loss_per_base": paired_t([float(np.mean(a["loss_diffs"])) for a in have]),
            "above_none": sum(d > 0 for d in pairs),
            "below_none": sum(d < 0 for d in pairs),
        }
    post_rl: dict[str, Any] = {}
    for arm in arms:
        runs = [r for f in folders for r in f["post_rl"].get(arm, [])]
        if runs:
            post_rl[arm] = {
                "pairs": len(runs),
                "before": paired_t([r["before"] - r["before_none"] for r in runs]),
                "after": paired_t([r["after"] - r["after_none"] for r in runs]),
            }
    return {"split": split, "folders": folders, "pooled": pooled, "post_rl": post_rl}


def markdown(p: dict[str, Any], arms: tuple[str, ...]) -> str:
    lines = [
        f"Accuracy on `{p['split']}` (%). Differences against `none`, paired by seed, 95% t over seeds.",
        "",
        "| run | base_seed | base | RL | none | " + " | ".join(f"{a} (vs none)" for a in arms) + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in arms) + " |",
    ]
    for f in p["folders"]:
        cells = []
        for arm in arms:
            a = f["arms"].get(arm)
            cells.append(f"{a['accuracy'][0] * 100:.1f} ({format_ci(a['vs_none'])})" if a else "")
        base = f"{f['base'] * 100:.1f}" if f["base"] is not None else ""
        rl = f"{f['rl'] * 100:.1f}" if f["rl"] is not None else ""
        lines.append(f"| {Path(f['out']).name} | {f['base_seed']} | {base} | {rl} | {format_pm(f['none'])} | " + " | ".join(cells) + " |")  # fmt: skip
    for f in p["folders"][1:]:
        if f["differs"]:
            lines.insert(1, f"\nNote: {f['out']} differs from {p['folders'][0]['out']} in {', '.join(f['differs'])}.")
    lines += ["", "Pooled over the base models:", ""]
    lines += ["| arm | bases | (base, seed) pairs: t | per base: t over bases | bootstrap over problems | pairs above / below none |"]  # fmt: skip
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for arm in arms:
        q = p["pooled"].get(arm)
        if q:
            lines.append(
                f"| {arm} | {q['bases']} | {format_ci(q['pairs'])} (n={q['pairs']['n']}) | {format_ci(q['per_base'])} | "
                f"{format_ci(q['bootstrap'])} | {q['above_none']} / {q['below_none']} |"
            )
    lines += ["", "Clean-solution loss, arm minus `none` (nats per token; 95% t):", ""]
    lines += ["| arm | " + " | ".join(Path(f["out"]).name for f in p["folders"]) + " | (base, seed) pairs | per base |"]
    lines += ["| --- | " + " | ".join("---" for _ in p["folders"]) + " | --- | --- |"]
    for arm in arms:
        q = p["pooled"].get(arm)
        if q:
            cells = [
                format_ci(f["arms"][arm]["loss_vs_none"], 1.0, 4) if arm in f["arms"] else "" for f in p["folders"]
            ]
            lines.append(
                f"| {arm} | "
                + " | ".join(cells)
                + f" | {format_ci(q['loss_pairs'], 1.0, 4)} | {format_ci(q['loss_per_base'], 1.0, 4)} |"
            )
    if p["post_rl"]:
        lines += ["", "Second RL turn, arm minus `none` (accuracy points; 95% t over the (base, seed) pairs):", ""]
        lines += [
            "| arm | pairs | before RL | after RL | per pair after RL (run: seed) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for arm, q in p["post_rl"].items():
            each = ", ".join(
                f"{Path(f['out']).name}:{r['seed']} {(r['after'] - r['after_none']) * 100:+.1f}"
                for f in p["folders"]
                for r in f["post_rl"].get(arm, [])
            )
            lines.append(f"| {arm} | {q['pairs']} | {format_ci(q['before'])} | {format_ci(q['after'])} | {each} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="replicates", description=__doc__.split("\n\n")[0])
    ap.add_argument("outs", nargs="+", type=Path, help="output folders of the experiment (one per base_seed)")
    ap.add_argument(
        "--arms",
        type=arm_list,
        default=("online", "shuffled"),
        help="arms to compare with none (default online,shuffled)",
    )
    ap.add_argument(
        "--seeds", type=int_list, default=(), help="only these mid-training seeds, e.g. 1,2,3 (default: all)"
    )
    ap.add_argument("--split", default="heldout", choices=EVAL_SPLITS, help="evaluation split (default heldout)")
    args = ap.parse_args(argv)

    def run() -> None:
        for out in args.outs:
            if not (out / CONFIG_FILE).is_file():
                raise ValueError(f"{out}: no {CONFIG_FILE}; give output folders of the experiment")
        print(markdown(pool(args.outs, args.arms, args.split, args.seeds), args.arms), end="")

    return run_command("replicates", run)


if __name__ == "__main__":
    raise SystemExit(main())
