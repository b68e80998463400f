#!/usr/bin/env bash
# One GPU check of remit (see benchmarks/gpu_check.py): GPU tests, training and scoring speed of a ~1B model.
# For a machine with Python and torch (CUDA) but no network: it makes a venv that reuses the given Python's
# packages (torch), installs from benchmarks/wheels/ (benchmarks/fetch_gpu_wheels.sh) only the distributions
# whose module does not import, installs remit itself (editable, no dependencies), and runs gpu_check.py.
#
#   benchmarks/gpu_check.sh [--tiny] [gpu_check.py flags]    # results in $OUT, else benchmarks/out/
#   benchmarks/gpu_check.sh --probe                          # only list the modules this Python lacks
#   benchmarks/gpu_check.sh --setup                          # only install what benchmarks/wheels/ holds (the
#                                                            # venv stays: wheels can come in several lots)
#
# Environment: PYTHON (default python3), VENV (default benchmarks/.gpu-venv), WHEELS (default benchmarks/wheels).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$REPO/benchmarks/.gpu-venv}"
WHEELS="${WHEELS:-$REPO/benchmarks/wheels}"

# module to import:requirement (what remit's training, scoring and GPU tests import). setuptools >= 70.1 builds
# editable installs without the wheel package; transformers 5 is what the tests' configs are written for.
NEEDS="
megatron.core:megatron-core>=0.16
transformers:transformers>=5.0
tokenizers:tokenizers
safetensors:safetensors
huggingface_hub:huggingface-hub
pyarrow:pyarrow
numpy:numpy
psutil:psutil
pytest:pytest
setuptools:setuptools>=70.1
"

missing_in() {  # $1: a python; prints the requirements it does not meet (module missing, or too old)
    PYTHONWARNINGS=ignore "$1" - $NEEDS 2>/dev/null <<'EOF'
import importlib, importlib.metadata as md, re, sys

def release(v):
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])

for need in sys.argv[1:]:
    module, req = need.split(":", 1)
    dist, _, low = req.partition(">=")
    try:
        importlib.import_module(module)
        ok = not low or release(md.version(dist)) >= release(low)
    except Exception:
        ok = False
    if not ok:
        print(req)
EOF
}

if [[ "${1:-}" == "--probe" ]]; then
    "$PYTHON" -c 'import sys; print("Python", sys.version.split()[0])'
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA available:", torch.cuda.is_available())' 2>/dev/null ||
        echo "torch: missing (gpu_check needs a Python with torch)"
    echo "missing: $(missing_in "$PYTHON" | tr '\n' ' ')"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
    # --system-site-packages reaches the base interpreter only; when PYTHON is itself a venv, its own
    # site-packages (where torch may live) are added behind the new venv's by a .pth file.
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' >"$site/_gpu_check_base.pth"
fi
PY="$VENV/bin/python"
"$PY" -c 'import torch' || { echo "gpu_check: $PYTHON has no torch; run it with a Python that has (PYTHON=...)" >&2; exit 1; }

mapfile -t missing < <(missing_in "$PY")
for req in "${missing[@]}"; do
    # One at a time, dependencies resolved against what is installed (those still missing come from the
    # folder too), so that a wheel that is not there fails alone.
    echo "gpu_check: installing $req from $WHEELS"
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$req" 2>&1 | grep -v "dependency\|requires" || true
done
# setuptools only serves the editable install, which PYTHONPATH replaces when it fails
mapfile -t missing < <(missing_in "$PY" | grep -v '^setuptools')
if ((${#missing[@]})); then
    echo "gpu_check: still missing: ${missing[*]}; fetch their wheels with benchmarks/fetch_gpu_wheels.sh" >&2
    [[ "${1:-}" == "--setup" ]] || exit 1
fi
"$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e "$REPO" >/dev/null 2>&1 ||
    echo "gpu_check: editable install of remit failed; using PYTHONPATH=$REPO instead"
[[ "${1:-}" == "--setup" ]] && exit 0
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$REPO/benchmarks/gpu_check.py" "$@"
