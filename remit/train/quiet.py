"""Quiet by default: Megatron-Core's, torch's and transformers' own warnings are hidden unless ``--verbose``.

- Megatron-Core warns at import that Apex and Transformer Engine are absent (six lines on a CPU), and
  about defaults it will change; transformers and torch add their own. None of them is about the run.
- The filters go into the environment as well, so torchrun's other ranks and the checkpoint writer's
  forked processes stay quiet too; a variable the user has set is kept.
- remit's own lines stay: the run header, the step lines, the summary and errors.
"""

from __future__ import annotations

import os
import warnings

QUIET_ENV = {
    "PYTHONWARNINGS": "ignore",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TORCH_CPP_LOG_LEVEL": "ERROR",
}


def quiet_libraries(verbose: bool) -> None:
    """Hide the libraries' warnings unless `verbose` (call before Megatron-Core is imported)."""
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore")


__all__ = ["QUIET_ENV", "quiet_libraries"]
