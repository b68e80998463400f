#!/usr/bin/env bash
# Create .venv-mcore019/ at the repository root: Python 3.12 with the newest megatron-core 0.19.x and what
# the training tests need, the other end of the `train` extra's range (.venv/ holds 0.16.1, the last
# release for Python 3.11). Idempotent: a stamp records what was installed, so a second run returns at
# once unless this script or pyproject changed.
#   Python 3.12: $PYTHON312, else python3.12 on PATH, else pyenv's newest 3.12.
#   torch from PyPI is the CUDA build (about 5.5 GB with its CUDA libraries); it runs on the CPU, and it
#   brings triton, which megatron-core 0.19 needs to import.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REMIT_MCORE_VENV:-$ROOT/.venv-mcore019}"
STAMP="$VENV/.remit-setup"
MCORE="megatron-core>=0.19,<0.20"
want="$(cat "$ROOT/scripts/setup-env-mcore-latest.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
py=""
# The first candidate that runs and is 3.12 (a pyenv shim may exist for a version that is not active).
for cand in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
  $(ls -d "$pyenv_root"/versions/3.12*/bin/python 2>/dev/null | sort -rV); do
  if [[ -n "$cand" ]] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    py="$cand"
    break
  fi
done
if [[ -z "$py" ]]; then
  echo "setup-env-mcore-latest: no Python 3.12 found; set PYTHON312=/path/to/python3.12" >&2
  exit 1
fi
echo "setting up $VENV with $py and $MCORE (a few minutes and about 6 GB the first time)" >&2
[[ -x "$VENV/bin/python" ]] || "$py" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch "$MCORE" psutil
"${pip[@]}" -e "$ROOT[train,dev]"
"$VENV/bin/python" - <<'EOF' >&2 || { echo "setup-env-mcore-latest: the environment does not import cleanly" >&2; exit 1; }
import warnings
warnings.simplefilter("ignore")
import megatron.core.package_info as info, pyarrow, transformers, remit.train.checkpoint
assert (info.MAJOR, info.MINOR) == (0, 19), info.__version__
print(f"megatron-core {info.MAJOR}.{info.MINOR}.{info.PATCH}")
EOF
echo "$want" > "$STAMP"
echo "environment ready: $VENV" >&2
