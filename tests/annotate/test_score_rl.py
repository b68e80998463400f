"""`--score rl`: the RL pass only, trainable with `online` and `none`; the weights' readers explain what is
missing, and a later base pass completes the output with the bytes of a one-shot two-pass run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from remit.annotate.cli import main
from remit.annotate.config import AnnotateConfig
from remit.annotate.job import run_job
from remit.shards import open_output
from remit.shards.manifest import read_manifest
from remit.shards.validate import validate_output
from remit.train.preflight import PreflightError, check_weights_available
from tests.annotate.runs import assert_same_output, fresh_copy, job


@pytest.fixture(scope="module")
def rl_only(tmp_path_factory, model_pair, corpus, planned, one_thread) -> Path:
    out = fresh_copy(planned, tmp_path_factory.mktemp("rl-only") / "out")
    assert run_job(AnnotateConfig(**job(model_pair, corpus, out, score="rl")), 0, 1) == 0
    return out


def test_an_rl_only_output_holds_log_p_rl_and_no_weights(rl_only, reference):
    manifest = json.loads((rl_only / "manifest.json").read_text())
    assert manifest["passes"] == "rl"
    assert validate_output(rl_only) == []
    ref = json.loads(reference["manifest.json"])
    assert manifest["totals"]["tokens"] == ref["totals"]["tokens"]
    for table in open_output(rl_only).iter_tables():
        base = np.concatenate(table.column("logp_base").to_numpy(zero_copy_only=False))
        weight = np.concatenate(table.column("weight").to_numpy(zero_copy_only=False))
        logp_rl = np.concatenate(table.column("logp_rl").to_numpy(zero_copy_only=False))
        assert np.isnan(base).all() and (weight == 1.0).all() and np.isfinite(logp_rl).sum() > 0


def test_the_rl_log_probs_equal_those_of_a_two_pass_run(rl_only, reference, tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    for name, data in reference.items():
        (ref / name).write_bytes(data)
    got = np.concatenate(
        [np.concatenate(t.column("logp_rl").to_numpy(False)) for t in open_output(rl_only).iter_tables()]
    )
    want = np.concatenate([np.concatenate(t.column("logp_rl").to_numpy(False)) for t in open_output(ref).iter_tables()])
    np.testing.assert_array_equal(got, want)


def test_training_accepts_online_rho1_and_none_and_refuses_the_stored_weights(rl_only):
    manifest = read_manifest(rl_only)
    for mode in ("online", "rho1", "none"):
        check_weights_available(manifest, mode, rl_only)
    for mode in ("static", "shuffled"):
        with pytest.raises(PreflightError, match=r"RL pass only.*--score both"):
            check_weights_available(manifest, mode, rl_only)
    with pytest.raises(PreflightError, match=r"RL pass only.*--score both") as e:
        check_weights_available(manifest, "static", rl_only)
    assert f"remit-annotate repair {rl_only}" in str(e.value)


def test_stats_and_show_explain_the_missing_base_pass(rl_only, tmp_path, capsys):
    assert main(["stats", str(rl_only)]) != 0
    assert main(["show", str(rl_only), "-o", str(tmp_path / "p.html")]) != 0
    err = capsys.readouterr().err
    assert err.count("RL pass only") == 2 and err.count("--score both") == 2
    assert "Traceback" not in err and not (tmp_path / "p.html").exists()


def test_the_base_pass_completes_the_output_byte_identical(rl_only, reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(rl_only, out)
    # The command the refusals recommend.
    assert main(["repair", str(out), "--score", "both", "--progress-every", "1000"]) == 0
    assert_same_output(out, reference)
    assert json.loads((out / "manifest.json").read_text())["passes"] == "both"
    assert "holds the RL pass only; scoring the base pass" in capsys.readouterr().err
