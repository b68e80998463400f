"""Quiet by default: the libraries' own log lines and warnings are hidden unless --verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remit.annotate.cli import build_parser

SCRIPT = """
import logging, sys, warnings
from remit.annotate.quiet import quiet_libraries
quiet_libraries(sys.argv[1] == "verbose")
from transformers.utils import logging as hf_logging
hf_logging.get_logger("transformers.test").warning("LIBRARY-WARNING")
logging.getLogger("vllm.test").info("VLLM-INFO")
logging.getLogger("vllm.test").error("VLLM-ERROR")
warnings.warn("PYTHON-WARNING")
print("remit progress", file=sys.stderr)
"""


def run(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LOGGING", "TRANSFORMERS_VERB", "PYTHONWARN"))}
    env["PYTHONPATH"] = os.getcwd()
    script = "import logging; logging.basicConfig(level=logging.INFO)\n" + SCRIPT
    done = subprocess.run([sys.executable, "-c", script, mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_library_lines_only_with_verbose(mode):
    err = run(mode)
    assert "remit progress" in err and "VLLM-ERROR" in err
    shown = [m for m in ("LIBRARY-WARNING", "VLLM-INFO", "PYTHON-WARNING") if m in err]
    assert shown == ([] if mode == "quiet" else ["LIBRARY-WARNING", "VLLM-INFO", "PYTHON-WARNING"])


def test_every_job_command_takes_verbose():
    for command in (None, "run", "plan", "repair"):
        args = build_parser(command).parse_args(
            (["OUT"] if command == "repair" else ["--base", "b", "--rl", "r", "--input", "i", "--output", "o"])
            + ["--verbose"]
        )
        assert args.verbose is True
