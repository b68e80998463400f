#!/usr/bin/env bash
# The confirmatory study of docs/results.md, in its pre-registered order: `none` and `online` on every
# base first, then the controls (online-sft, oracle, shuffled, the clean annealing split), base 0 first.
# Each base is its own experiment folder ROOT/baseB; a rerun continues where it stopped. After each step
# the folder's small files are copied into docs/results/data (experiments/flywheel/collect.py).
#   ./scripts/flywheel-confirm.sh [ROOT] [BASES]     (default: flywheel-confirm/ and 0,1,2,3)
set -euo pipefail
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-flywheel-confirm}"
IFS=, read -r -a BASES <<< "${2:-0,1,2,3}"
STUDY=(--eval-splits heldout_confirm,heldout,heldout_templates --final-only --set 'post_rl_arms=[]')

step() {  # step BASE ARMS SEEDS
  "$ROOT_DIR/scripts/flywheel.sh" --out "$OUT/base$1" --set "base_seed=$1" --arms "$2" --seeds "$3" "${STUDY[@]}"
  PYTHONPATH="$ROOT_DIR" "$ROOT_DIR/.venv/bin/python" -m experiments.flywheel.collect "$OUT/base$1" \
    --into "$ROOT_DIR/docs/results/data"
}

for b in "${BASES[@]}"; do step "$b" none,online 6,7,8; done
# the controls one seed at a time: each seed's runs are evaluated (and collected) as soon as they finish
for b in "${BASES[@]}"; do
  for s in 6 7 8; do step "$b" none,online,online-sft,oracle,shuffled,clean-none,clean-online,clean-shuffled "$s"; done
done
