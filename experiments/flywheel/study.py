"""The confirmatory study's numbers, from the committed raw data (`docs/results/data/base{b}/...`).

- `load_study`: every base folder that exists, its reference models, the final checkpoint of every
  mid-training run, the weight diagnoses and the stage wall times; what the plan asked for and is
  not there is listed in `Study.missing`, not guessed.
- `contrast`: one pre-registered contrast (arm minus reference arm, paired by (base, seed)): per-base
  means, the estimate (their mean), the 95% t interval over bases and the hierarchical bootstrap.
- `problem_bootstrap`: the bootstrap over problems, the size of the evaluation noise only.
- `decide`: the pre-registered decision rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.flywheel.report import mean_std, t975

#: The plan of the pre-registration: bases, mid-training seeds and arms.
BASES = (0, 1, 2, 3)
SEEDS = (6, 7, 8)
ARMS = ("none", "online", "shuffled", "online-sft", "oracle", "clean-none", "clean-online", "clean-shuffled")
REFERENCES = ("base", "rl", "sft")
ANNOTATIONS = ("rl", "sft", "clean")
CONFIRM = "heldout_confirm"
SPLITS = (CONFIRM, "heldout", "heldout_templates")
BOOTSTRAP_DRAWS = 10_000
PROBLEM_DRAWS = 2_000


@dataclass(frozen=True)
class Contrast:
    """`arm` minus `ref` on `metric` ("accuracy" or "loss") of `split`, paired by (base, seed)."""

    key: str
    arm: str
    ref: str
    split: str = CONFIRM
    metric: str = "accuracy"

    @property
    def label(self) -> str:
        where = "" if self.split == CONFIRM else f" on {self.split}"
        what = ", loss" if self.metric == "loss" else ""
        return f"{self.arm} − {self.ref}{what}{where}"


PRIMARY = Contrast("primary", "online", "none")
SECONDARY = (
    Contrast("loss", "online", "none", metric="loss"),
    Contrast("online_vs_shuffled", "online", "shuffled"),
    Contrast("online_vs_sft", "online", "online-sft"),
    Contrast("sft_vs_none", "online-sft", "none"),
    Contrast("oracle_vs_none", "oracle", "none"),
    Contrast("online_vs_oracle", "online", "oracle"),
    Contrast("clean_online", "clean-online", "clean-none"),
    Contrast("clean_shuffled", "clean-shuffled", "clean-none"),
    Contrast("templates", "online", "none", split="heldout_templates"),
    Contrast("heldout", "online", "none", split="heldout"),
)


@dataclass
class Base:
    """What one base model's folder holds (any part may be absent)."""

    index: int
    config: dict[str, Any] = field(default_factory=dict)
    data_stats: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> its evaluation entry
    runs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (arm, seed) -> final checkpoint
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # rl / sft / clean / oracle
    stages: dict[str, float] = field(default_factory=dict)
    vocab: int | None = None  # the tokenizer's size, recorded by the data stage


@dataclass
class Study:
    bases: dict[int, Base]
    missing_runs: dict[int, list[tuple[str, int]]]  # base -> planned (arm, seed) cells without an evaluation
    missing_files: list[str]  # other planned files that are absent, relative to the data folder


@dataclass
class ContrastResult:
    contrast: Contrast
    diffs: dict[int, list[float]]  # base -> the paired differences of its common seeds
    t: dict[str, float]  # mean, lo, hi (nan with fewer than 2 bases), n
    bootstrap: dict[str, float]  # lo, hi (nan without data)

    @property
    def per_base(self) -> dict[int, float]:
        return {b: float(np.mean(d)) for b, d in self.diffs.items()}

    @property
    def above(self) -> int:
        return sum(x > 0 for d in self.diffs.values() for x in d)

    @property
    def below(self) -> int:
        return sum(x < 0 for d in self.diffs.values() for x in d)


# --- reading -------------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """The JSON in `path`, or a one-line error naming the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); restore it from the experiment") from e


def final_model(evaluation: dict[str, Any], path: Path) -> dict[str, Any]:
    """The entry of the last checkpoint (the largest iteration; None counts as 0)."""
    if not evaluation.get("models"):
        raise ValueError(f"{path}: no evaluated model in it")
    return max(evaluation["models"], key=lambda m: m.get("iteration") or 0)


def _load_base(folder: Path, index: int, missing: list[str]) -> Base:
    base = Base(index)

    def optional(rel: str) -> Any:
        path = folder / rel
        if path.is_file():
            return read_json(path)
        missing.append(f"{folder.name}/{rel}")
        return None

    base.config = optional("config.json") or {}
    base.data_stats = optional("data_stats.json") or {}
    for name in REFERENCES:
        ev = optional(f"eval/refs/{name}.json")
        if ev is not None:
            base.refs[name] = _checked(
                final_model(ev, folder / f"eval/refs/{name}.json"), folder / f"eval/refs/{name}.json"
            )
    for name in (*ANNOTATIONS, "oracle"):
        table = optional(f"weights/{name}.json")
        if table is not None:
            base.weights[name] = table
    for arm in ARMS:
        for seed in SEEDS:
            path = folder / "eval" / "mid" / f"{arm}-s{seed}.json"
            if path.is_file():
                base.runs[arm, seed] = _checked(final_model(read_json(path), path), path)
    for path in sorted((folder / "stages").glob("*.json")):
        stage = read_json(path)
        if not isinstance(stage.get("seconds"), (int, float)):
            raise ValueError(f'{path}: no "seconds" number in it')
        base.stages[path.stem] = float(stage["seconds"])
        if path.stem == "data" and isinstance(stage.get("vocab"), int):
            base.vocab = stage["vocab"]
    return base


def _checked(model: dict[str, Any], path: Path) -> dict[str, Any]:
    """`model` if it holds every split with its accuracy, loss and per-problem answers."""
    for sp in SPLITS:
        lacking = [k for k in ("accuracy", "loss", "correct") if k not in model.get(sp, {})]
        if lacking:
            raise ValueError(f"{path}: the final checkpoint has no {', '.join(lacking)} on {sp}")
    return model


def load_study(data: Path) -> Study:
    """Every base folder under `data` that exists; what the plan asked for and is absent is listed."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such data folder (give --from the folder holding base0/ ... base3/)")
    bases: dict[int, Base] = {}
    missing_files: list[str] = []
    for b in BASES:
        folder = data / f"base{b}"
        if folder.is_dir():
            bases[b] = _load_base(folder, b, missing_files)
        else:
            missing_files.append(f"base{b}/")
    if not bases:
        raise ValueError(f"{data}: no base0/ ... base3/ folder in it")
    missing_runs = {
        b: [(arm, s) for arm in ARMS for s in SEEDS if b not in bases or (arm, s) not in bases[b].runs] for b in BASES
    }
    return Study(bases, {b: cells for b, cells in missing_runs.items() if cells}, missing_files)


# --- statistics ----------------------------------------------------------------------------------


def t_over_bases(per_base: list[float]) -> dict[str, float]:
    """Mean of the per-base means and its 95% t interval (df = bases - 1; nan bounds below 2 bases)."""
    if not per_base:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    n = len(per_base)
    m, s = mean_std(per_base)
    half = t975(n - 1) * s / math.sqrt(n) if n > 1 else math.nan
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def hierarchical_bootstrap(diffs: list[list[float]], draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> dict[str, float]:
    """95% percentile interval of the mean of per-base means: each draw resamples the bases with
    replacement, then within every drawn base its paired differences with replacement."""
    if not diffs:
        return {"lo": math.nan, "hi": math.nan}
    rng = np.random.default_rng(seed)
    n_bases, widest = len(diffs), max(len(d) for d in diffs)
    table = np.full((n_bases, widest), np.nan)
    for i, d in enumerate(diffs):
        table[i, : len(d)] = d
    counts = np.array([len(d) for d in diffs])
    bases = rng.integers(0, n_bases, size=(draws, n_bases))
    n = counts[bases][..., None]  # [draws, slots, 1]
    picks = np.floor(rng.random((draws, n_bases, widest)) * n).astype(np.int64)
    values = table[bases[..., None], picks]  # [draws, slots, widest]
    used = np.arange(widest) < n
    means = np.where(used, values, 0.0).sum(-1) / n[..., 0]
    stats = means.mean(-1)
    return {"lo": float(np.quantile(stats, 0.025)), "hi": float(np.quantile(stats, 0.975))}


def paired_diffs(base: Base, c: Contrast) -> list[float]:
    """`c.arm` minus `c.ref` for every seed both arms ran on this base."""
    seeds = [s for s in SEEDS if (c.arm, s) in base.runs and (c.ref, s) in base.runs]
    return [base.runs[c.arm, s][c.split][c.metric] - base.runs[c.ref, s][c.split][c.metric] for s in seeds]


def contrast(study: Study, c: Contrast) -> ContrastResult:
    """The contrast over the bases that ran both arms with at least one common seed."""
    diffs = {b: d for b, base in study.bases.items() if (d := paired_diffs(base, c))}
    per_base = [float(np.mean(d)) for d in diffs.values()]
    return ContrastResult(c, diffs, t_over_bases(per_base), hierarchical_bootstrap(list(diffs.values())))


def problem_bootstrap(study: Study, c: Contrast, draws: int = PROBLEM_DRAWS, seed: int = 0) -> dict[str, float]:
    """95% interval of the contrast's estimate resampling the problems of the split (the same problem
    indices for every run): how much the evaluation's finite problem set moves it, nothing more."""
    rows = []
    for base in study.bases.values():
        seeds = [s for s in SEEDS if (c.arm, s) in base.runs and (c.ref, s) in base.runs]
        if seeds:
            d = [
                np.subtract(base.runs[c.arm, s][c.split]["correct"], base.runs[c.ref, s][c.split]["correct"])
                for s in seeds
            ]
            rows.append(np.mean(d, axis=0))
    if not rows:
        return {"lo": math.nan, "hi": math.nan}
    per_problem = np.mean(rows, axis=0)  # the estimate is the mean of this over problems
    idx = np.random.default_rng(seed).integers(0, len(per_problem), size=(draws, len(per_problem)))
    stats = per_problem[idx].mean(-1)
    return {"lo": float(np.quantile(stats, 0.025)), "hi": float(np.quantile(stats, 0.975))}


def decide(t: dict[str, float]) -> str:
    """The pre-registered rule: "help" if the interval is above 0, "hurt" if below, else "not established"."""
    if t["lo"] > 0:
        return "help"
    if t["hi"] < 0:
        return "hurt"
    return "not established"


# --- the readings fixed in advance ---------------------------------------------------------------


def excludes_zero(t: dict[str, float]) -> bool:
    return bool(t["lo"] > 0 or t["hi"] < 0)


def reading_rl(decision: str, online_vs_sft: ContrastResult) -> str:
    """The first reading: if `online` helps, does the gain come from the RL model (against `online-sft`)?"""
    if decision != "help":
        return "does not apply (`online` is not found to help)"
    if online_vs_sft.t["n"] < 2:
        return "cannot be applied (`online` minus `online-sft` has no t interval: fewer than 2 bases)"
    if excludes_zero(online_vs_sft.t):
        return "does not apply (`online` minus `online-sft` has an interval that excludes 0)"
    return "applies: the gain is not shown to come from RL (`online` minus `online-sft` has an interval containing 0)"


def reading_noise(primary: ContrastResult, oracle: ContrastResult, clean_online: ContrastResult) -> str:
    """The second reading: is the gain noise filtering (`oracle` at least `online`, no clean-split gain)?"""
    if primary.t["n"] == 0 or oracle.t["n"] == 0 or clean_online.t["n"] < 2:
        return "cannot be applied (a contrast it needs has no estimate or no interval)"
    reasons = []
    if oracle.t["mean"] < primary.t["mean"]:
        reasons.append("`oracle` minus `none` is below `online` minus `none`")
    if excludes_zero(clean_online.t):
        reasons.append("`clean-online` minus `clean-none` has an interval that excludes 0")
    if reasons:
        return f"does not apply ({'; '.join(reasons)})"
    return (
        "applies: the gain is read as noise filtering (`oracle` minus `none` is at least `online` minus `none`, "
        "and `clean-online` minus `clean-none` has an interval containing 0)"
    )
