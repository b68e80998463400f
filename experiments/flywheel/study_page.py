"""The results page of the confirmatory study, rendered from `study.Study`.

- Tables are markdown built here; the prose around them lives in `results_template.md` and
  `readme_template.md`, with `{{name}}` fields filled from `fields()`.
- Figures: the data each figure plots (`figure_data`, compared exactly by --check) and the PNGs drawn
  from that data (`draw_figures`; their bytes depend on the matplotlib version, so never compared).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from experiments.flywheel.report import format_pm
from experiments.flywheel.study import (
    ARMS,
    BASES,
    CONFIRM,
    PRIMARY,
    REFERENCES,
    SECONDARY,
    SEEDS,
    SPLITS,
    ContrastResult,
    Study,
    contrast,
    decide,
    problem_bootstrap,
    reading_noise,
    reading_rl,
)

TEMPLATE = Path(__file__).with_name("results_template.md")
README_TEMPLATE = Path(__file__).with_name("readme_template.md")
FIGURES = ("contrasts.png", "accuracy_by_arm.png")
KEY_KINDS = ("result, wrong step", "final answer, wrong number", "result, correct step")
NA = "–"
ONE_OFF_STAGES = {"pretrain": "pre-training", "rl": "RL", "sft": "SFT", "annotate": "annotation (RL)",
                  "annotate-sft": "annotation (SFT)", "annotate-clean": "annotation (clean)"}  # fmt: skip
_FIELD = re.compile(r"\{\{(\w+)\}\}")


def fill(template: Path, values: dict[str, str]) -> str:
    """`template`'s text with every `{{name}}` replaced by `values[name]`."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise ValueError(f"{template}: unknown field {{{{{m.group(1)}}}}}; add it to study_page.fields")
        return values[m.group(1)]

    return _FIELD.sub(one, template.read_text())


# --- numbers as text -----------------------------------------------------------------------------


def _scale(c: ContrastResult) -> tuple[float, int, str]:
    return (1.0, 4, " nats/token") if c.contrast.metric == "loss" else (100.0, 1, " points")


def signed(x: float, c: ContrastResult) -> str:
    scale, digits, _ = _scale(c)
    return f"{x * scale:+.{digits}f}"


def interval(lo: float, hi: float, c: ContrastResult) -> str:
    return "n/a" if math.isnan(lo) else f"[{signed(lo, c)}, {signed(hi, c)}]"


def with_interval(c: ContrastResult) -> str:
    """The estimate with its unit and t interval, e.g. `+1.2 points [-0.3, +2.7]`."""
    if c.t["n"] == 0:
        return "n/a"
    return f"{signed(c.t['mean'], c)}{_scale(c)[2]} {interval(c.t['lo'], c.t['hi'], c)}"


def estimate(c: ContrastResult) -> str:
    """`with_interval` and the number of bases, e.g. `+1.2 points [-0.3, +2.7] (95% t over 4 bases)`."""
    n = c.t["n"]
    if n == 0:
        return "n/a (no base ran both arms)"
    if n < 2:
        return f"{signed(c.t['mean'], c)}{_scale(c)[2]} (1 base; t interval n/a)"
    return f"{with_interval(c)} (95% t over {n} bases)"


def _pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.1f}"


# --- tables --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def references_table(study: Study) -> str:
    rows = []
    for b, base in study.bases.items():
        for name in REFERENCES:
            m = base.refs.get(name)
            accs = [_pct(m[sp]["accuracy"]) if m else NA for sp in SPLITS]
            loss = f"{m[CONFIRM]['loss']:.4f}" if m else NA
            rows.append([str(b), name.upper() if name != "base" else "base", *accs, loss])
    return _table(["base", "model", *(f"{sp} %" for sp in SPLITS), f"{CONFIRM} loss"], rows)


def weights_table(study: Study) -> str:
    rows = []
    for b, base in study.bases.items():
        for name in ("rl", "sft", "clean"):
            table = base.weights.get(name)
            cells = [f"{table[k]['mean_weight']:.3f}" if table and k in table else NA for k in KEY_KINDS]
            rows.append([str(b), name, *cells])
    return _table(["base", "annotation", *(f"{k}: mean weight" for k in KEY_KINDS)], rows)


def oracle_table(study: Study) -> str:
    rows = []
    for b, base in study.bases.items():
        o = base.weights.get("oracle")
        if o:
            share = f"{100 * o['tokens_down'] / o['tokens']:.1f}%" if o["tokens"] else NA
            rows.append([str(b), f"{o['tokens']:,}", f"{o['tokens_down']:,}", share, f"{o['documents_down']:,}"])
        else:
            rows.append([str(b), NA, NA, NA, NA])
    return _table(["base", "tokens", "tokens at 0.8", "share", "documents with tokens at 0.8"], rows)


def accuracy_table(study: Study) -> str:
    rows = []
    for b, base in study.bases.items():
        for arm in ARMS:
            accs = {s: base.runs[arm, s][CONFIRM]["accuracy"] for s in SEEDS if (arm, s) in base.runs}
            if not accs:
                continue
            mean = format_pm((float(np.mean(list(accs.values()))), _sd(list(accs.values()))))
            rows.append([str(b), arm, str(len(accs)), mean, *(_pct(accs.get(s)) for s in SEEDS)])
    return _table(["base", "arm", "seeds", "mean ± sd %", *(f"seed {s}" for s in SEEDS)], rows)


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def primary_table(study: Study, c: ContrastResult) -> str:
    rows = []
    for b, d in c.diffs.items():
        base = study.bases[b]
        seeds = [s for s in SEEDS if (c.contrast.arm, s) in base.runs and (c.contrast.ref, s) in base.runs]
        arm = np.mean([base.runs[c.contrast.arm, s][CONFIRM]["accuracy"] for s in seeds])
        ref = np.mean([base.runs[c.contrast.ref, s][CONFIRM]["accuracy"] for s in seeds])
        each = ", ".join(f"{s}: {signed(x, c)}" for s, x in zip(seeds, d))
        rows.append([str(b), str(len(seeds)), _pct(float(ref)), _pct(float(arm)), signed(c.per_base[b], c), each])
    header = ["base", "seeds", "`none` %", "`online` %", "`online` − `none` (points)", "per seed"]
    return _table(header, rows)


def secondary_table(results: list[ContrastResult]) -> str:
    rows = []
    for c in results:
        per_base = ", ".join(f"{b}: {signed(x, c)}" for b, x in c.per_base.items()) or NA
        rows.append(
            [
                f"`{c.contrast.label}`",
                str(c.t["n"]),
                with_interval(c),
                interval(c.bootstrap["lo"], c.bootstrap["hi"], c),
                per_base,
                f"{c.above} / {c.below}",
            ]
        )
    header = ["contrast", "bases", "estimate [95% t over bases]", "hierarchical bootstrap", "per base",
              "pairs above / below"]  # fmt: skip
    return _table(header, rows)


def _seconds(values: list[float], mean: bool = False) -> str:
    return NA if not values else f"{(np.mean(values) if mean else sum(values)):,.0f}"


def compute_table(study: Study) -> str:
    """Wall time (s) per base: the one-off stages by name, the mean mid-training run, every evaluation."""
    rows = []
    for b, base in study.bases.items():
        st = base.stages
        once = [_seconds([st[k]] if k in st else []) for k in ONE_OFF_STAGES]
        mid = [v for k, v in st.items() if k.startswith("mid-")]
        evals = [v for k, v in st.items() if k.startswith("eval")]
        total = _seconds(list(st.values()))
        rows.append([str(b), *once, f"{_seconds(mid, mean=True)} ({len(mid)} runs)", _seconds(evals), total])
    header = ["base", *ONE_OFF_STAGES.values(), "mid-training run, mean", "evaluation, all", "every stage"]
    return _table(header, rows)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return flat


def config_text(study: Study) -> str:
    """Whether the bases ran one configuration (apart from `base_seed`), from their config.json."""
    recorded = {b: base.config for b, base in study.bases.items() if base.config}
    if not recorded:
        return "No base folder holds its config.json."
    flat = {b: _flatten(c.get("config", {})) for b, c in recorded.items()}
    keys = sorted(set().union(*flat.values()) - {"base_seed"})
    differs = [k for k in keys if len({f.get(k) for f in flat.values()}) > 1]
    names = ", ".join(str(b) for b in recorded)
    text = f"The recorded configurations of bases {names} "
    text += f"differ in {', '.join(f'`{k}`' for k in differs)}." if differs else "are the same apart from `base_seed`."
    quick = [str(b) for b, c in recorded.items() if c.get("quick")]
    if quick:
        text += f" Bases {', '.join(quick)} ran with `--quick`: a smoke test, not a measurement."
    return text


def missing_text(study: Study) -> str:
    if not study.missing_runs and not study.missing_files:
        return "Nothing the plan asked for is missing."
    rows = []
    for b in BASES:
        cells = study.missing_runs.get(b, [])
        files = [f for f in study.missing_files if f.startswith(f"base{b}/")]
        if cells or files:
            runs = ", ".join(f"{arm}-s{s}" for arm, s in cells) or NA
            rows.append([str(b), f"{len(cells)}", runs, ", ".join(files) or NA])
    intro = "Missing from the data (not replaced; every analysis uses what is there):\n\n"
    return intro + _table(["base", "runs missing", "(arm-seed) cells", "other files missing"], rows)


# --- the page's fields ---------------------------------------------------------------------------


def analyse(study: Study) -> dict[str, Any]:
    """Every contrast, the primary's problem bootstrap and decision, and the readings fixed in advance."""
    primary = contrast(study, PRIMARY)
    secondary = {c.key: contrast(study, c) for c in SECONDARY}
    decision = decide(primary.t)
    return {
        "primary": primary,
        "secondary": list(secondary.values()),
        "problems": problem_bootstrap(study, PRIMARY),
        "decision": decision,
        "reading_rl": reading_rl(decision, secondary["online_vs_sft"]),
        "reading_noise": reading_noise(primary, secondary["oracle_vs_none"], secondary["clean_online"]),
    }


def confirm_problems(study: Study) -> int:
    """How many problems `heldout_confirm` has (from its first evaluated run or reference model)."""
    for base in study.bases.values():
        for model in [*base.runs.values(), *base.refs.values()]:
            return len(model[CONFIRM]["correct"])
    return 0


def parameters(study: Study) -> str:
    """The model's parameter count, from the recorded shape and the vocabulary the data stage built
    (Llama: untied embeddings, grouped-query attention, SwiGLU, RMSNorm weights), e.g. "423,840"."""
    for base in study.bases.values():
        shape, vocab = base.config.get("config", {}).get("shape"), base.vocab
        if shape and vocab:
            h, f, heads, kv = shape["hidden"], shape["ffn"], shape["heads"], shape["kv_heads"]
            layer = 2 * h * h + 2 * h * kv * (h // heads) + 3 * h * f + 2 * h
            return f"{2 * vocab * h + shape['layers'] * layer + h:,}"
    return "n/a"


def fields(study: Study, res: dict[str, Any]) -> dict[str, str]:
    """The `{{name}}` values of both templates."""
    primary: ContrastResult = res["primary"]
    values = {
        "bases": ", ".join(str(b) for b in study.bases),
        "n_bases": str(len(study.bases)),
        "parameters": parameters(study),
        "confirm_problems": f"{confirm_problems(study):,}",
        "primary": estimate(primary),
        "decision": res["decision"],
        "reading_rl": res["reading_rl"],
        "reading_noise": res["reading_noise"],
        "primary_bootstrap": interval(primary.bootstrap["lo"], primary.bootstrap["hi"], primary),
        "primary_problems": interval(res["problems"]["lo"], res["problems"]["hi"], primary),
        "primary_pairs": f"{primary.above} / {primary.below}",
        "missing": missing_text(study),
        "config": config_text(study),
        "table_references": references_table(study),
        "table_weights": weights_table(study),
        "table_oracle": oracle_table(study),
        "table_accuracy": accuracy_table(study),
        "table_primary": primary_table(study, primary),
        "table_secondary": secondary_table(res["secondary"]),
        "table_compute": compute_table(study),
    }
    values.update({f"c_{c.contrast.key}": estimate(c) for c in res["secondary"]})
    return values


# --- figures -------------------------------------------------------------------------------------


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 6)


def figure_data(study: Study, res: dict[str, Any]) -> dict[str, Any]:
    """What each figure plots, rounded to 6 decimals (the part of a figure --check compares)."""
    rows = []
    for c in [res["primary"], *res["secondary"]]:
        scale, _, unit = _scale(c)
        rows.append(
            {
                "label": c.contrast.label,
                "unit": unit.strip(),
                "per_base": {str(b): _num(v * scale) for b, v in c.per_base.items()},
                "estimate": _num(c.t["mean"] * scale),
                "lo": _num(c.t["lo"] * scale),
                "hi": _num(c.t["hi"] * scale),
            }
        )
    by_arm = {
        str(b): {
            arm: {str(s): _num(100 * base.runs[arm, s][CONFIRM]["accuracy"]) for s in SEEDS if (arm, s) in base.runs}
            for arm in ARMS
        }
        for b, base in study.bases.items()
    }
    return {"contrasts.png": rows, "accuracy_by_arm.png": by_arm}


def draw_figures(data: dict[str, Any], folder: Path) -> None:
    """The PNGs of `figure_data` into `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    rows = data["contrasts.png"]
    units = list(dict.fromkeys(r["unit"] for r in rows))
    fig, axes = plt.subplots(1, len(units), figsize=(6 * len(units), 0.45 * len(rows) + 1.5), squeeze=False)
    for ax, unit in zip(axes[0], units):
        mine = [r for r in rows if r["unit"] == unit][::-1]
        for y, r in enumerate(mine):
            dots = [v for v in r["per_base"].values() if v is not None]
            ax.scatter(dots, [y] * len(dots), s=14, color="0.5")
            if r["estimate"] is not None:
                ax.plot([r["estimate"]], [y], "D", color="C0")
            if r["lo"] is not None:
                ax.plot([r["lo"], r["hi"]], [y, y], color="C0")
        ax.axvline(0, color="k", lw=0.8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
        ax.set_yticks(range(len(mine)), [r["label"] for r in mine], fontsize=8)
        ax.set_xlabel(f"difference ({unit})")
        ax.set_title("dots: bases; diamond, bar: estimate, 95% t over bases", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "contrasts.png", dpi=110)
    plt.close(fig)
    bases = data["accuracy_by_arm.png"]
    fig, axes = plt.subplots(1, len(bases), figsize=(4 * len(bases), 4), squeeze=False)
    for ax, (b, arms) in zip(axes[0], bases.items()):
        for x, arm in enumerate(ARMS):
            ys = [v for v in arms.get(arm, {}).values() if v is not None]
            ax.scatter([x] * len(ys), ys, s=14)
            if ys:
                ax.plot([x - 0.3, x + 0.3], [np.mean(ys)] * 2, color="k", lw=1)
        ax.set_xticks(range(len(ARMS)), ARMS, rotation=60, fontsize=8)
        ax.set_title(f"base {b}")
        ax.set_ylabel(f"{CONFIRM} accuracy %")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "accuracy_by_arm.png", dpi=110)
    plt.close(fig)
