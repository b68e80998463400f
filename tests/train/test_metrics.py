"""metrics.jsonl on resume: the trajectory up to the checkpoint is kept, a torn last line dropped."""

from __future__ import annotations

import json

import pytest

from remit.train.metrics import MetricsLog, read_metrics


def test_resume_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    lines = [json.dumps({"step": i, "loss": 1.0 / i}) for i in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    log = MetricsLog(tmp_path, resume_iteration=2)
    log.write({"step": 3, "loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert read_metrics(tmp_path)[-1]["loss"] == 0.5


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        MetricsLog(tmp_path, resume_iteration=2)
