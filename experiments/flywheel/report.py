"""The results: tables (markdown and JSON) and plots from the stage outputs under OUT/.

- Per arm: held-out accuracy and clean-solution loss of the final checkpoint, mean ± std over seeds.
- Paired difference against `none`, seed by seed (arms share the data order of a seed): the mean and
  a 95% t-interval over seeds, and a 95% bootstrap interval that resamples problems (paired: the same
  problems for both arms, every seed).
- Curves: accuracy and loss against the training step, mean over seeds (PNG).
- Base vs RL model, the second RL turn, and the wall time of every stage.
- The command line (`main`) is the confirmatory study's page instead: `--from DIR --write/--check
  docs/results.md` regenerates or verifies it from the committed raw data (study.py, study_page.py,
  publish.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from remit.common.atomic import write_text_atomic

#: Two-sided 95% quantiles of Student's t (df 1..30); beyond that the normal 1.96.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip
TABLE_SPLITS = ("heldout", "heldout_templates")


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def paired_t(diffs: list[float]) -> dict[str, float]:
    m, s = mean_std(diffs)
    n = len(diffs)
    half = t975(n - 1) * s / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def paired_bootstrap(arm: list[np.ndarray], ref: list[np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, float]:
    """95% interval of the mean (over seeds) accuracy difference, resampling problems with replacement."""
    a, b = np.stack(arm).astype(np.float64), np.stack(ref).astype(np.float64)  # [seeds, problems]
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.shape[1], size=(reps, d.shape[1]))
    stats = d[:, idx].mean(axis=(0, 2))
    return {"mean": float(d.mean()), "lo": float(np.quantile(stats, 0.025)), "hi": float(np.quantile(stats, 0.975))}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _final(ev: dict[str, Any]) -> dict[str, Any]:
    return max(ev["models"], key=lambda m: m["iteration"] or 0)


def collect(out: Path, splits: tuple[str, ...]) -> dict[str, Any]:
    res: dict[str, Any] = {"mid": {}, "curves": {}, "post_rl": {}}
    for name in ("base", "rl"):
        # eval/refs/ (every split, the confirmatory one too) where the study evaluated the references
        ev = _read(out / "eval" / "refs" / f"{name}.json") or _read(out / "eval" / f"{name}.json")
        if ev:
            res[name] = ev["models"][0]
    for path in sorted((out / "eval" / "mid").glob("*.json")):
        arm, seed = path.stem.rsplit("-s", 1)
        ev = json.loads(path.read_text())
        res["mid"].setdefault(arm, {})[int(seed)] = _final(ev)
        curve = [(0, res["base"])] if "base" in res else []
        curve += sorted(((m["iteration"], m) for m in ev["models"]), key=lambda x: x[0])
        curve_splits = [sp for sp in splits if all(sp in m for _, m in curve)]
        metrics_file = out / "runs" / "mid" / path.stem / "metrics.jsonl"
        train_loss = []
        if metrics_file.exists():
            for line in metrics_file.read_text().splitlines():
                r = json.loads(line)
                train_loss.append((r["step"], r["loss_unweighted"]))
        res["curves"].setdefault(arm, {})[int(seed)] = {
            "steps": [s for s, _ in curve],
            **{f"{sp}_accuracy": [m[sp]["accuracy"] for _, m in curve] for sp in curve_splits},
            **{f"{sp}_loss": [m[sp]["loss"] for _, m in curve] for sp in curve_splits},
            "train_loss_unweighted": train_loss,
        }
    for path in sorted((out / "eval" / "post_rl").glob("*.json")):
        arm, seed = path.stem.rsplit("-s", 1)
        res["post_rl"].setdefault(arm, {})[int(seed)] = json.loads(path.read_text())["models"][0]
    res["stages"] = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((out / "stages").glob("*.json"))}
    return res


def summarize(res: dict[str, Any], splits: tuple[str, ...]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    ref = res["mid"].get("none", {})
    for arm, by_seed in res["mid"].items():
        seeds = sorted(by_seed)
        row: dict[str, Any] = {"seeds": seeds}
        for sp in splits:
            accs = [by_seed[s][sp]["accuracy"] for s in seeds]
            losses = [by_seed[s][sp]["loss"] for s in seeds]
            row[sp] = {"accuracy": mean_std(accs), "loss": mean_std(losses), "per_seed": accs}
            common = [s for s in seeds if s in ref]
            if arm != "none" and common:
                diffs = [by_seed[s][sp]["accuracy"] - ref[s][sp]["accuracy"] for s in common]
                ldiffs = [by_seed[s][sp]["loss"] - ref[s][sp]["loss"] for s in common]
                row[sp]["vs_none"] = {
                    "t": paired_t(diffs),
                    "bootstrap": paired_bootstrap(
                        [np.asarray(by_seed[s][sp]["correct"]) for s in common],
                        [np.asarray(ref[s][sp]["correct"]) for s in common],
                    ),
                    "loss_t": paired_t(ldiffs),
                }
        table[arm] = row
    post: dict[str, Any] = {}
    for arm, by_seed in res["post_rl"].items():
        seeds = sorted(by_seed)
        post[arm] = {
            "seeds": seeds,
            **{
                sp: {
                    "before": mean_std(
                        [res["mid"][arm][s][sp]["accuracy"] for s in seeds if s in res["mid"].get(arm, {})]
                    ),
                    "after": mean_std([by_seed[s][sp]["accuracy"] for s in seeds]),
                    "per_seed_after": [by_seed[s][sp]["accuracy"] for s in seeds],
                }
                for sp in splits
            },
        }
        if arm != "none" and "none" in res["post_rl"]:
            common = [s for s in seeds if s in res["post_rl"]["none"]]
            for sp in splits:
                diffs = [by_seed[s][sp]["accuracy"] - res["post_rl"]["none"][s][sp]["accuracy"] for s in common]
                if diffs:
                    post[arm][sp]["vs_none"] = paired_t(diffs)
                    post[arm][sp]["vs_none_bootstrap"] = paired_bootstrap(
                        [np.asarray(by_seed[s][sp]["correct"]) for s in common],
                        [np.asarray(res["post_rl"]["none"][s][sp]["correct"]) for s in common],
                    )
    return {"table": table, "post_rl": post}


def format_pm(ms: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{ms[0] * scale:.{digits}f} ± {ms[1] * scale:.{digits}f}"


def format_ci(c: dict[str, float], scale: float = 100.0, digits: int = 1) -> str:
    if not math.isfinite(c.get("lo", float("nan"))):
        return f"{c['mean'] * scale:+.{digits}f}"
    return f"{c['mean'] * scale:+.{digits}f} [{c['lo'] * scale:+.{digits}f}, {c['hi'] * scale:+.{digits}f}]"


def markdown(res: dict[str, Any], summ: dict[str, Any], splits: tuple[str, ...], arms: tuple[str, ...]) -> str:
    lines: list[str] = []
    shown = [sp for sp in TABLE_SPLITS if sp in splits] or list(splits)
    if "base" in res:
        lines += ["### Base and RL model (greedy exact match, %)", "", "| model | " + " | ".join(shown) + " |",
                  "|---|" + "---|" * len(shown)]  # fmt: skip
        for name in ("base", "rl"):
            if name in res:
                lines.append(
                    f"| {name} | " + " | ".join(f"{100 * res[name][sp]['accuracy']:.1f}" for sp in shown) + " |"
                )
        lines.append("")
        if "rl" in res:
            gains = [
                f"{sp} {format_ci(paired_bootstrap([np.asarray(res['rl'][sp]['correct'])], [np.asarray(res['base'][sp]['correct'])]))}"
                for sp in shown
            ]
            lines += [f"RL minus base (points, 95% bootstrap interval over problems): {'; '.join(gains)}", ""]
        by_len = [
            f"{name} {sp}: "
            + ", ".join(f"{k} steps {100 * v:.1f}" for k, v in res[name][sp]["accuracy_by_steps"].items())
            for name in ("base", "rl")
            for sp in shown
            if name in res and "accuracy_by_steps" in res[name][sp]
        ]
        if by_len:
            lines += ["Accuracy by chain length: " + "; ".join(by_len) + ".", ""]
    order = [a for a in arms if a in summ["table"]] + [a for a in summ["table"] if a not in arms]
    if order:
        lines += [
            "### Mid-training arms: final checkpoint (mean ± std over seeds)",
            "",
            "| arm | seeds | " + " | ".join(f"{sp} acc % | {sp} loss" for sp in shown) + " |",
            "|---|---|" + "---|---|" * len(shown),
        ]
        for arm in order:
            row = summ["table"][arm]
            cells = []
            for sp in shown:
                cells += [format_pm(row[sp]["accuracy"]), format_pm(row[sp]["loss"], 1.0, 4)]
            lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "### Paired difference against `none` (accuracy points; 95% intervals)",
            "",
            "| arm | " + " | ".join(f"{sp}: t over seeds | {sp}: bootstrap over problems" for sp in shown) + " |",
            "|---|" + "---|---|" * len(shown),
        ]
        for arm in order:
            if arm == "none" or "vs_none" not in summ["table"][arm][shown[0]]:
                continue
            cells = []
            for sp in shown:
                v = summ["table"][arm][sp]["vs_none"]
                cells += [format_ci(v["t"]), format_ci(v["bootstrap"])]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", "Loss on clean held-out solutions, paired difference against `none` (nats/token):", ""]
        lines += ["| arm | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for arm in order:
            if arm == "none" or "vs_none" not in summ["table"][arm][shown[0]]:
                continue
            lines.append(
                f"| {arm} | "
                + " | ".join(format_ci(summ["table"][arm][sp]["vs_none"]["loss_t"], 1.0, 4) for sp in shown)
                + " |"
            )
        lines.append("")
    if summ["post_rl"]:
        lines += [
            "### Second RL turn (the same GRPO recipe on the mid-trained models; accuracy %)",
            "",
            "| mid-training arm | seeds | " + " | ".join(f"{sp} before RL | {sp} after RL" for sp in shown) + " |",
            "|---|---|" + "---|---|" * len(shown),
        ]
        for arm, row in summ["post_rl"].items():
            cells = []
            for sp in shown:
                cells += [format_pm(row[sp]["before"]), format_pm(row[sp]["after"])]
            lines.append(f"| {arm} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        for arm, row in summ["post_rl"].items():
            if "vs_none" in row[shown[0]]:
                diffs = "; ".join(
                    f"{sp} {format_ci(row[sp]['vs_none'])}, bootstrap over problems {format_ci(row[sp]['vs_none_bootstrap'])}"
                    for sp in shown
                )
                lines.append(f"\nAfter RL, `{arm}` minus `none` (paired by seed, 95% t-interval): {diffs}")
        lines.append("")
    if res.get("stages"):
        total = sum(res["stages"].values())
        lines += ["### Wall time per stage (s)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in res["stages"].items()]
        lines += [f"| total | {total:.0f} |", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], splits: tuple[str, ...], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    have = {k for by_seed in res["curves"].values() for c in by_seed.values() for k in c}
    shown = [sp for sp in (*TABLE_SPLITS, *splits) if f"{sp}_accuracy" in have]
    shown = list(dict.fromkeys(shown))[:2]
    paths = []
    for kind, ylabel in (
        ("accuracy", "exact-match accuracy (greedy)"),
        ("loss", "loss on clean solutions (nats/token)"),
    ):
        fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
        for ax, sp in zip(axes[0], shown):
            for arm, by_seed in res["curves"].items():
                curves = [c for c in by_seed.values() if f"{sp}_{kind}" in c]
                if not curves:
                    continue
                steps = curves[0]["steps"]
                ys = np.array([c[f"{sp}_{kind}"] for c in curves if c["steps"] == steps])
                m = ys.mean(0)
                ax.plot(steps, m, marker="o", label=f"{arm} (n={len(ys)})")
                if len(ys) > 1:
                    s = ys.std(0, ddof=1)
                    ax.fill_between(steps, m - s, m + s, alpha=0.12)
            ax.set_title(sp)
            ax.set_xlabel("mid-training step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{kind}_vs_step.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    # The training loss of every step (unweighted, on the noisy annealing rows each arm was fed).
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, by_seed in res["curves"].items():
        runs = [np.array(c["train_loss_unweighted"]) for c in by_seed.values() if c["train_loss_unweighted"]]
        if not runs or any(len(r) != len(runs[0]) for r in runs):
            continue
        ys = np.stack([r[:, 1] for r in runs])
        ax.plot(runs[0][:, 0], ys.mean(0), label=f"{arm} (n={len(runs)})", lw=1.2)
    ax.set_xlabel("mid-training step")
    ax.set_ylabel("training loss, unweighted (nats/token)")
    ax.set_title("annealing rows, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "train_loss_vs_step.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_report(out: Path, cfg: Any, splits: tuple[str, ...]) -> dict[str, Any]:
    res = collect(out, splits)
    summ = summarize(res, splits)
    md = markdown(res, summ, splits, tuple(cfg.arms))
    kinds = None
    if (out / "weights_by_token_kind.json").exists():
        from experiments.flywheel.diagnose import markdown as kinds_markdown

        kinds = json.loads((out / "weights_by_token_kind.json").read_text())
        md += "\n### Where the annotation put its weights\n\n" + kinds_markdown(kinds) + "\n"
    plots = plot(res, splits, out / "plots") if res["curves"] else []
    write_text_atomic(out / "results.md", md + "\n")
    payload = {"summary": summ, "stages": res["stages"], "plots": [str(p) for p in plots], "weights_by_kind": kinds}
    payload["base"] = {sp: res["base"][sp]["accuracy"] for sp in splits} if "base" in res else None
    payload["rl"] = {sp: res["rl"][sp]["accuracy"] for sp in splits} if "rl" in res else None
    write_text_atomic(out / "results.json", json.dumps(payload, indent=1, default=float) + "\n")
    print(md, flush=True)
    return payload


# --- command line: the confirmatory study's page -------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`--from DIR --check PAGE` or `--from DIR --write PAGE`: see experiments/flywheel/publish.py."""
    import argparse
    import sys

    from remit.common.errors import run_command

    ap = argparse.ArgumentParser(
        prog="python -m experiments.flywheel.report",
        description="Regenerate (--write) or verify (--check) the results page, the README's results block and "
        "the figures from the committed raw data.",
    )
    ap.add_argument("--from", dest="data", type=Path, required=True, help="the raw data folder (base0/ ... base3/)")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", type=Path, metavar="PAGE", help="compare PAGE, the README block and the figures")
    mode.add_argument("--write", type=Path, metavar="PAGE", help="write PAGE, the README block and the figures")
    ap.add_argument("--readme", type=Path, help="the README with the results markers (default: PAGE's ../README.md)")
    args = ap.parse_args(argv)

    def run() -> int:
        from experiments.flywheel.publish import check, default_readme, write

        page = args.check or args.write
        readme = args.readme or default_readme(page)
        if args.write:
            r = write(args.data, page, readme)
            print(f"{page}: written ({r.summary()}); {readme} results block and figures updated")
            return 0
        r, difference = check(args.data, page, readme)
        if difference:
            print(
                f"{difference}; regenerate with python -m experiments.flywheel.report --from {args.data} --write {page}",
                file=sys.stderr,
            )
            return 1
        print(f"{page}: matches the data ({r.summary()})")
        return 0

    return run_command("report", run)


if __name__ == "__main__":
    raise SystemExit(main())
