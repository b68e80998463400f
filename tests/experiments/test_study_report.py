"""The confirmatory study's page: regenerated from raw data (`report --from DIR --write/--check`), its
statistics against hand-computed cases, and the real check of the committed page where its data is."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from experiments.flywheel import report
from experiments.flywheel.publish import BEGIN, END
from experiments.flywheel.study import (
    ARMS,
    PRIMARY,
    SECONDARY,
    SPLITS,
    ContrastResult,
    decide,
    hierarchical_bootstrap,
    load_study,
    reading_noise,
    reading_rl,
    t_over_bases,
)
from experiments.flywheel.study_page import TEMPLATE, fill

REPO = Path(__file__).resolve().parents[2]
PROBLEMS = 200
KINDS = ("result, wrong step", "final answer, wrong number", "result, correct step", "question")


# --- a fake data tree in the experiment's layout ---------------------------------------------------


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _model(rng: np.random.Generator, p: float, name: str, iteration: int | None) -> dict:
    entry: dict = {"model": name, "iteration": iteration}
    for sp in SPLITS:
        correct = (rng.random(PROBLEMS) < p).astype(int).tolist()
        entry[sp] = {"accuracy": float(np.mean(correct)), "n": PROBLEMS, "correct": correct,
                     "loss": float(0.1 - p / 20 + rng.normal(0, 0.002)), "loss_n": 1000,
                     "accuracy_by_steps": {"3": 0.5, "4": 0.4}, "examples": []}  # fmt: skip
    return entry


def make_data(root: Path, bases: tuple[int, ...] = (0, 1, 2), seeds: tuple[int, ...] = (6, 7, 8),
              skip: tuple[tuple[int, str, int], ...] = ()) -> Path:  # fmt: skip
    """base{b}/ folders with every file the report reads; `skip` leaves (base, arm, seed) runs out."""
    rng = np.random.default_rng(1)
    for b in bases:
        d = root / f"base{b}"
        _write(d / "config.json", {"quick": False, "config": {"base_seed": b, "eps": 0.2}})
        _write(d / "data_stats.json", {"splits": {"heldout_confirm": {"problems": PROBLEMS}}})
        level = 0.4 + 0.1 * b
        for i, name in enumerate(("base", "rl", "sft")):
            _write(d / "eval" / "refs" / f"{name}.json", {"models": [_model(rng, level + 0.1 * i, name, None)]})
        for arm in ARMS:
            for s in seeds:
                if (b, arm, s) not in skip:
                    p = level + 0.15 + (0.03 if "online" in arm else 0.0)
                    ev = {"models": [_model(rng, 0.3, arm, 40), _model(rng, p, arm, 80)]}
                    _write(d / "eval" / "mid" / f"{arm}-s{s}.json", ev)
        kinds = {k: {"tokens": 100, "mean_weight": 0.8 + 0.1 * j, "share_at_0.8": 0.5, "share_at_1.2": 0.1,
                     "mean_logp_rl_minus_base": -1.0} for j, k in enumerate(KINDS)}  # fmt: skip
        for name in ("rl", "sft"):
            _write(d / "weights" / f"{name}.json", kinds)
        _write(d / "weights" / "clean.json", {k: v for k, v in kinds.items() if "wrong" not in k})
        _write(d / "weights" / "oracle.json", {"tokens": 5000, "tokens_down": 400, "documents_down": 30})
        for stage, secs in (("pretrain", 160.0), ("rl", 180.0), ("sft", 40.0), ("annotate", 65.0),
                            ("mid-none-s6", 20.0), ("mid-online-s6", 22.0), ("eval-mid", 130.0)):  # fmt: skip
            _write(d / "stages" / f"{stage}.json", {"stage": stage, "seconds": secs})
    return root


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A data tree, a docs/ folder and a README with the markers; the page written once."""
    data = make_data(tmp_path / "data")
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"# project\n\nintro\n\n{BEGIN}\nold results\n{END}\n\nmore\n")
    page = tmp_path / "docs" / "results.md"
    assert report.main(["--from", str(data), "--write", str(page)]) == 0
    return {"data": data, "page": page, "readme": readme}


def _check(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = report.main(["--from", str(site["data"]), "--check", str(site["page"])])
    out = capsys.readouterr()
    return rc, out.out + out.err


# --- write, then check -----------------------------------------------------------------------------


def test_write_then_check_passes(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _check(site, capsys)
    assert rc == 0, out
    assert "matches the data (" in out and "2 figures" in out
    assert (site["page"].parent / "results" / "contrasts.png").stat().st_size > 0
    assert "old results" not in site["readme"].read_text() and "more" in site["readme"].read_text()


def test_a_changed_number_names_its_line(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    lines = site["page"].read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| 1 | none |"))
    lines[at] = lines[at].replace(" | 3 | ", " | 2 | ", 1)
    site["page"].write_text("\n".join(lines) + "\n")
    rc, out = _check(site, capsys)
    assert rc == 1
    assert f"results.md line {at + 1}: expected '| 1 | none | 3 |" in out
    assert "found '| 1 | none | 2 |" in out and "--write" in out


def test_a_flipped_answer_in_the_data_fails(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = site["data"] / "base0" / "eval" / "mid" / "online-s7.json"
    ev = json.loads(path.read_text())
    final = ev["models"][1]["heldout_confirm"]
    final["correct"][0] = 1 - final["correct"][0]
    final["accuracy"] = float(np.mean(final["correct"]))
    path.write_text(json.dumps(ev))
    rc, out = _check(site, capsys)
    assert rc == 1 and "results.md line" in out


def test_a_changed_readme_block_fails(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    text = site["readme"].read_text()
    site["readme"].write_text(text.replace("base models", "bases", 1))
    rc, out = _check(site, capsys)
    assert rc == 1 and "README.md line 7:" in out


def test_edited_figure_data_fails(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = site["page"].parent / "results" / "figures.json"
    data = json.loads(path.read_text())
    data["contrasts.png"][0]["estimate"] += 0.1
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    rc, out = _check(site, capsys)
    assert rc == 1 and "figures.json line" in out


def test_a_missing_png_fails(site: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    (site["page"].parent / "results" / "accuracy_by_arm.png").unlink()
    rc, out = _check(site, capsys)
    assert rc == 1 and "accuracy_by_arm.png" in out


def test_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = str(tmp_path / "docs" / "results.md")
    assert report.main(["--from", str(tmp_path / "nowhere"), "--check", page]) == 2
    assert "nowhere: no such data folder" in capsys.readouterr().err
    data = make_data(tmp_path / "data", bases=(0,))
    (data / "base0" / "eval" / "refs" / "rl.json").write_text("{not json")
    assert report.main(["--from", str(data), "--check", page]) == 2
    err = capsys.readouterr().err
    assert "rl.json: not valid JSON" in err and len(err.strip().splitlines()) == 1


# --- missing data ----------------------------------------------------------------------------------


def test_missing_cells_are_listed(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", bases=(0, 1), skip=((1, "oracle", 7), (1, "oracle", 8)))
    study = load_study(data)
    assert study.missing_runs[1] == [("oracle", 7), ("oracle", 8)]
    assert len(study.missing_runs[2]) == len(study.missing_runs[3]) == 3 * len(ARMS)
    assert "base2/" in study.missing_files and 0 not in study.missing_runs
    page = tmp_path / "docs" / "results.md"
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n")
    assert report.main(["--from", str(data), "--write", str(page)]) == 0
    text = page.read_text()
    assert "| 1 | 2 | oracle-s7, oracle-s8 |" in text
    assert "| 2 | 24 | none-s6, none-s7" in text


def test_one_base_gives_no_t_interval(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", bases=(0,))
    page = tmp_path / "docs" / "results.md"
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n")
    assert report.main(["--from", str(data), "--write", str(page)]) == 0
    assert "(1 base; t interval n/a)" in page.read_text()
    assert "effect is: **not established**" in page.read_text()


def test_bases_without_runs_still_render(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", bases=(0, 1), seeds=())
    page = tmp_path / "docs" / "results.md"
    (tmp_path / "README.md").write_text(f"{BEGIN}\n{END}\n")
    assert report.main(["--from", str(data), "--write", str(page)]) == 0
    assert "n/a (no base ran both arms)" in page.read_text()


def test_an_unknown_template_field_is_named(tmp_path: Path) -> None:
    template = tmp_path / "t.md"
    template.write_text("{{known}} and {{unknown}}")
    with pytest.raises(ValueError, match=r"t.md: unknown field \{\{unknown\}\}"):
        fill(template, {"known": "x"})


# --- statistics ------------------------------------------------------------------------------------


def test_t_interval_over_two_bases_by_hand() -> None:
    t = t_over_bases([0.01, 0.03])
    # mean 0.02; sd = sqrt(((-0.01)^2 + 0.01^2) / 1) = 0.01414...; half = 12.706 * sd / sqrt(2) = 0.12706
    assert t["mean"] == pytest.approx(0.02)
    assert t["lo"] == pytest.approx(0.02 - 0.12706) and t["hi"] == pytest.approx(0.02 + 0.12706)
    assert math.isnan(t_over_bases([0.02])["lo"])


def test_hierarchical_bootstrap_bounds_and_determinism() -> None:
    diffs = [[0.01, 0.03, 0.02], [-0.02, 0.0], [0.05, 0.04, 0.06]]
    a, b = hierarchical_bootstrap(diffs), hierarchical_bootstrap(diffs)
    assert a == b
    assert min(np.mean(d) for d in diffs) <= a["lo"] < a["hi"] <= max(np.mean(d) for d in diffs)
    assert hierarchical_bootstrap([[0.01, 0.01], [0.03]]) == pytest.approx({"lo": 0.01, "hi": 0.03})
    assert hierarchical_bootstrap(diffs, seed=1) != a


def _slow_hierarchical_bootstrap(diffs: list[list[float]], draws: int, seed: int = 0) -> dict[str, float]:
    """The same draws as `hierarchical_bootstrap`, one base slot at a time in plain loops."""
    rng = np.random.default_rng(seed)
    n, widest = len(diffs), max(len(d) for d in diffs)
    bases = rng.integers(0, n, size=(draws, n))
    u = rng.random((draws, n, widest))
    stats = []
    for r in range(draws):
        means = []
        for j in range(n):
            d = diffs[bases[r, j]]
            means.append(sum(d[int(u[r, j, k] * len(d))] for k in range(len(d))) / len(d))
        stats.append(sum(means) / n)
    return {"lo": float(np.quantile(stats, 0.025)), "hi": float(np.quantile(stats, 0.975))}


def test_hierarchical_bootstrap_matches_a_slow_reference() -> None:
    diffs = [[0.01, 0.03, 0.02], [-0.02], [0.05, 0.04]]
    assert hierarchical_bootstrap(diffs, draws=300) == pytest.approx(_slow_hierarchical_bootstrap(diffs, 300))


def _result(key: str, mean: float, lo: float, hi: float, n: int = 4) -> ContrastResult:
    c = next(c for c in (PRIMARY, *SECONDARY) if c.key == key)
    return ContrastResult(c, {}, {"mean": mean, "lo": lo, "hi": hi, "n": n}, {"lo": lo, "hi": hi})


def test_the_readings_fixed_in_advance() -> None:
    sft_zero, sft_above = _result("online_vs_sft", 0.0, -0.01, 0.01), _result("online_vs_sft", 0.02, 0.01, 0.03)
    assert reading_rl("help", sft_zero).startswith("applies: the gain is not shown to come from RL")
    assert reading_rl("help", sft_above).startswith("does not apply (`online` minus `online-sft`")
    assert reading_rl("not established", sft_zero).startswith("does not apply (`online` is not found")
    primary = _result("primary", 0.02, 0.01, 0.03)
    clean_zero = _result("clean_online", 0.0, -0.01, 0.01)
    assert reading_noise(primary, _result("oracle_vs_none", 0.03, 0, 0.06), clean_zero).startswith("applies")
    no = reading_noise(primary, _result("oracle_vs_none", 0.01, 0, 0.02), _result("clean_online", 0.02, 0.01, 0.03))
    assert "is below" in no and "excludes 0" in no
    assert reading_noise(primary, _result("oracle_vs_none", 0.03, 0, 0.06), _result("clean_online", 0, 0, 0, 1)) == (
        "cannot be applied (a contrast it needs has no estimate or no interval)"
    )


@pytest.mark.parametrize(("lo", "hi", "word"), [(0.001, 0.02, "help"), (-0.03, -0.001, "hurt"),
                                               (-0.01, 0.01, "not established"),
                                               (math.nan, math.nan, "not established")])  # fmt: skip
def test_decision_rule(lo: float, hi: float, word: str) -> None:
    assert decide({"mean": 0.0, "lo": lo, "hi": hi}) == word


def test_the_preregistration_is_verbatim() -> None:
    text = TEMPLATE.read_text()
    start = text.index("## Pre-registration of the confirmatory study")
    end = text.index("never as evidence for the method.") + len("never as evidence for the method.")
    digest = hashlib.sha256(text[start:end].encode()).hexdigest()
    assert digest == PREREGISTRATION_SHA256


#: sha256 of the pre-registration section as committed before the study ran (commit 35cd103).
PREREGISTRATION_SHA256 = "8ad7cb4609a3965d4c1bf4e913093e77d35776360bbac5de315b72ba9ea7bbd8"


# --- the committed page (CI) -----------------------------------------------------------------------


def test_the_committed_page_matches_its_data(capsys: pytest.CaptureFixture[str]) -> None:
    data = REPO / "docs" / "results" / "data"
    if not data.is_dir():
        pytest.skip("docs/results/data is not committed yet: nothing to check the page against")
    rc = report.main(["--from", str(data), "--check", str(REPO / "docs" / "results.md")])
    assert rc == 0, capsys.readouterr().err


def test_parameter_count_matches_the_model_transformers_builds(tmp_path):
    """The page's parameter count, from the recorded shape and vocabulary, against the real model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from experiments.flywheel.config import FULL
    from experiments.flywheel.models import write_config
    from experiments.flywheel.study import Base, Study
    from experiments.flywheel.study_page import parameters

    for shape, vocab in ((FULL.shape, 155), (replace(FULL.shape, hidden=64, heads=4, kv_heads=2, layers=2), 97)):
        folder = write_config(shape, vocab, tmp_path / f"cfg{vocab}")
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        base = Base(0, config={"config": {"shape": asdict(shape)}}, vocab=vocab)
        assert parameters(Study({0: base}, {}, [])) == f"{sum(p.numel() for p in model.parameters()):,}"
