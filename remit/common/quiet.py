"""Quiet by default: the libraries' own log lines are hidden unless ``--verbose`` (remit-annotate, remit-train).

- vLLM's INFO lines, Megatron-Core's, transformers' and torch's warnings and progress bars, and Python
  warnings are turned off through the environment before any of them is imported (vLLM reads its level
  at import; the environment also reaches vLLM's engine processes, torchrun's other ranks and the
  checkpoint writer's forked processes), and directly where one is already loaded.
- A variable the user has set is kept.
- remit's own lines stay: progress, notes, the summary, step lines and errors.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
    "TORCH_LOGS": "-torch",  # torch's own Python loggers at ERROR (e.g. "Triton not available" in vLLM's engine)
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
}


def quiet_requested() -> bool:
    """Whether the libraries' own output is hidden in this process (set by `quiet_libraries`)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")


def quiet_libraries(verbose: bool) -> None:
    """Hide the libraries' own output unless `verbose` (call before the engines are imported)."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")
    logging.getLogger("vllm").setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


__all__ = ["QUIET_ENV", "quiet_libraries", "quiet_requested"]
