#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh installs on a GPU machine without network access:
# CPython 3.12, manylinux x86_64, no dependencies resolved (the list below is the closure, minus torch and
# what torch brings). Versions are those the project is tested with; megatron-core is the newest 0.19.x
# (0.16.1, the project's pin, is the last release for Python 3.11).
#
#   benchmarks/fetch_gpu_wheels.sh            # every wheel below, into benchmarks/wheels/
#   benchmarks/fetch_gpu_wheels.sh pyarrow    # only these distributions (e.g. what gpu_check.sh --probe lists)
#
# Environment: WHEELS (target folder), MCORE_VERSION (default 0.19.2), PYTHON_VERSION (default 3.12).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${WHEELS:-$REPO/benchmarks/wheels}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PIP="${PIP:-python3 -m pip}"

# distribution==version, one per line: what remit's training, scoring and tests import, and their
# dependencies.
ALL="
megatron-core==${MCORE_VERSION:-0.19.2}
transformers==5.19.0
tokenizers==0.23.3
safetensors==0.8.0
huggingface-hub==2.4.0
hf-xet==1.8.0
httpx2==2.17.0
httpcore2==2.17.0
anyio==4.16.0
h11==0.16.0
idna==3.21
truststore==0.10.5
pydantic==2.14.4
pydantic-core==2.50.5
annotated-types==0.8.0
typing-inspection==0.4.5
typer==0.29.2
click==8.5.1
rich==15.0.0
markdown-it-py==4.3.0
mdurl==0.1.2
pygments==2.21.0
shellingham==1.5.4
annotated-doc==0.0.7
pyyaml==6.0.4
regex==2026.12.2
tqdm==4.70.1
filelock==4.3.2
fsspec==2026.9.0
typing-extensions==4.16.0
packaging==26.4
pyarrow==26.0.1
numpy==2.3.5
psutil==7.2.2
pytest==9.2.0
pluggy==1.7.0
iniconfig==2.3.1
setuptools==78.1.1
"

wanted=("$@")
mkdir -p "$WHEELS"
for spec in $ALL; do
    name="${spec%%==*}"
    if ((${#wanted[@]})); then
        keep=0
        for w in "${wanted[@]}"; do [[ "$w" == "$name" ]] && keep=1; done
        ((keep)) || continue
    fi
    $PIP download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
        --python-version "$PYTHON_VERSION" --implementation cp --abi "cp${PYTHON_VERSION/./}" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        "$spec"
done
total=$(du -cb "$WHEELS"/*.whl | tail -n 1 | cut -f1)
ls -1 "$WHEELS"
echo "$(ls "$WHEELS"/*.whl | wc -l) wheels, $((total / 1024 / 1024)) MiB in $WHEELS"
