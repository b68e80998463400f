"""`remit-annotate verify`: re-scoring a sample with the hf engine finds what was stored, and flags drift."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from remit.annotate.engines import EngineSettings
from remit.annotate.engines.hf import HfScorer
from remit.annotate.models import model_info
from remit.annotate.verify import add_arguments, run, sample_rows, verify_output
from remit.shards.synthetic import Document, write_output

SEQ_LEN = 48


def build_scored_output(
    root: Path, model_pair: tuple[Path, Path], *, rl_shift: float = 0.0, center: str = "row", eps: float = 0.2
) -> Path:
    """A small real output: documents packed, each segment scored by both models with the hf engine.

    `rl_shift` is added to the stored logp_rl of every tenth token, standing in for an output scored
    with a different model or setting than its manifest says.
    """
    base_dir, rl_dir = model_pair
    settings = EngineSettings(max_model_len=SEQ_LEN + 1)
    base, rl = HfScorer(base_dir, settings), HfScorer(rl_dir, settings)
    rng = np.random.default_rng(5)
    docs = []
    for i in range(12):
        toks = rng.integers(3, base.vocab_size, int(rng.integers(1, 90))).astype(np.int32)
        toks[-1] = 2
        docs.append(Document(doc_id=f"doc-{i}", source="test.jsonl", tokens=toks))

    def scores(rows: list) -> tuple[np.ndarray, np.ndarray]:
        prompts = [r.tokens[a:b] for r in rows for a, b in r.segments()]
        lb, lr = np.concatenate(base.score(prompts)), np.concatenate(rl.score(prompts))
        lr[::10] += rl_shift
        return lb, lr

    n_rows = -(-sum(len(d.tokens) for d in docs) // (SEQ_LEN + 1))
    run = {
        "run_id": "verify-test",
        "models": {"base": model_info(Path(base_dir)), "rl": model_info(Path(rl_dir))},
        "engine": {"name": "hf", "version": "test", "dtype": "float32", "settings": {}},
    }
    # Two shards, so that sampling crosses a shard boundary.
    out = write_output(
        root, docs, scores, seq_len=SEQ_LEN, rows_per_shard=-(-n_rows // 2), eps=eps, center=center, run=run
    )
    base.close()
    rl.close()
    return out


@pytest.fixture(scope="module")
def good_output(tmp_path_factory, model_pair) -> Path:
    return build_scored_output(tmp_path_factory.mktemp("good"), model_pair, center="segment")


@pytest.fixture(scope="module")
def drifted_output(tmp_path_factory, model_pair) -> Path:
    return build_scored_output(tmp_path_factory.mktemp("drift"), model_pair, rl_shift=0.01)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_sample_rows_is_seeded_distinct_and_maps_to_shards():
    picks = sample_rows([3, 0, 5], n=6, seed=1)
    assert picks == sample_rows([3, 0, 5], n=6, seed=1)
    assert len(set(picks)) == 6
    assert all((s == 0 and r < 3) or (s == 2 and r < 5) for s, r in picks)
    assert len(sample_rows([3, 0, 5], n=100, seed=0)) == 8  # more than there are: all rows


def test_verify_finds_the_stored_scores(good_output):
    report = verify_output(good_output, rows=1000)
    assert report.passed, report
    assert report.nan_mismatches == 0
    assert report.rows == len(report.sample_ids) and report.tokens > report.logp_base.count
    assert report.logp_base.max < 1e-4 and report.logp_rl.max < 1e-4 and report.weight.max < 1e-4
    assert report.sample_ids == sorted(set(report.sample_ids))


def test_verify_flags_drift(drifted_output):
    report = verify_output(drifted_output, rows=1000)
    assert not report.passed
    assert report.logp_rl.max == pytest.approx(0.01, abs=1e-4)
    assert report.logp_base.max < 1e-4
    assert report.weight.max > 1e-3  # the shifted log-probs moved the weights


def test_verify_cli_exit_status_and_json(good_output, drifted_output, capsys):
    assert cli([str(good_output), "--rows", "4", "--seed", "3"]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli([str(drifted_output), "--rows", "1000", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False and report["logp_rl"]["max"] > 1e-3
    assert cli([str(drifted_output), "--rows", "1000", "--tolerance", "0.05"]) == 0


def test_verify_missing_model_or_output(good_output, tmp_path, capsys):
    assert cli([str(good_output), "--base", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli([str(tmp_path / "no-output")]) == 2


def test_verify_refuses_another_checkpoint(good_output, model_pair, capsys):
    _base, rl = model_pair
    # The RL checkpoint passed as --base: same shapes, other weights, so the hash check must catch it.
    assert cli([str(good_output), "--base", str(rl)]) == 2
    assert "not the checkpoint that scored this output" in capsys.readouterr().err
