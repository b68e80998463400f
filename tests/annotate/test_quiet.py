"""Quiet by default: the libraries' own log lines and warnings are hidden unless --verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remit.annotate.cli import build_parser
from remit.common.quiet import QUIET_ENV

SCRIPT = """
import logging, sys, warnings
from remit.common.quiet import quiet_libraries
quiet_libraries(sys.argv[1] == "verbose")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.test").warning("LIBRARY-WARNING")
logging.getLogger("vllm.test").info("VLLM-INFO")
import torch._logging  # torch's own loggers (e.g. "Triton not available" in vLLM's engine process)
logging.getLogger("torch._library.triton").warning("TORCH-WARNING")
logging.getLogger("vllm.test").error("VLLM-ERROR")
warnings.warn("PYTHON-WARNING")
print("remit progress", file=sys.stderr)
"""


def run(mode: str) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VLLM_LOGGING", "TRANSFORMERS_VERB", "PYTHONWARN", "TORCH_LOGS"))
    }
    env["PYTHONPATH"] = os.getcwd()
    script = "import logging; logging.basicConfig(level=logging.INFO)\n" + SCRIPT
    done = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_library_lines_only_with_verbose(mode):
    err = run(mode)
    assert "remit progress" in err and "VLLM-ERROR" in err
    lines = ("LIBRARY-WARNING", "VLLM-INFO", "TORCH-WARNING", "PYTHON-WARNING")
    shown = [m for m in lines if m in err]
    assert shown == ([] if mode == "quiet" else list(lines))


def test_every_job_command_takes_verbose():
    for command in (None, "run", "plan", "repair"):
        args = build_parser(command).parse_args(
            (["OUT"] if command == "repair" else ["--base", "b", "--rl", "r", "--input", "i", "--output", "o"])
            + ["--verbose"]
        )
        assert args.verbose is True


@pytest.mark.vllm
@pytest.mark.slow
def test_a_vllm_run_shows_only_remit_lines_unless_verbose(model_pair, corpus, tmp_path):
    """The real command: vLLM's INFO lines, its checkpoint-loading bar and torch's warnings appear only with
    --verbose; the progress lines and the summary always."""
    base, rl = model_pair
    # other tests quiet this process in place (the CLI's own main): its environment must not reach the commands
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    runs = {}
    for mode in ("quiet", "verbose"):
        cmd = [sys.executable, "-m", "remit.annotate.cli", "--base", str(base), "--rl", str(rl)]
        cmd += ["--input", str(corpus), "--output", str(tmp_path / mode), "--seq-len", "64", "--engine", "vllm"]
        done = subprocess.run(
            cmd + (["--verbose"] if mode == "verbose" else []), env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[mode] = done.stdout + done.stderr
    assert "Loading safetensors" in runs["verbose"] and "INFO" in runs["verbose"], "the reference must show them"
    for line in ("Loading safetensors", "INFO", "Warning", "Triton"):
        assert line not in runs["quiet"], line
    for out in runs.values():
        assert "[rank 0 base]" in out and "[rank 0 rl]" in out and "passes" in out
