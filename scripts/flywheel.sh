#!/usr/bin/env bash
# The ReMiT flywheel in miniature (experiments/flywheel/README.md): set up .venv/ if needed, then run
# every stage through remit's own command lines. Options go to the experiment:
#   --quick             tiny sizes and one seed: a smoke test of the whole pipeline (minutes)
#   --arms A,B,...      mid-training arms (none, static, online, shuffled, rho1; ablations: see README)
#   --seeds 1,2,3       mid-training seeds
#   --out DIR           output folder (default: flywheel-output/); a rerun continues an unfinished one
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup-env.sh"
cd "$ROOT"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$ROOT/.venv/bin/python" -m experiments.flywheel "$@"
