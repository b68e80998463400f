#!/usr/bin/env bash
# The embedded default, end to end: set up .venv/ if needed, generate a tiny base/RL model pair,
# annotate the bundled sample corpus with vLLM, validate and inspect the shards, then run a short
# ReMiT mid-training on them with Megatron-Core. Everything lands in demo-output/ (or $1).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/demo-output}"
"$ROOT/scripts/setup-env.sh"
export PATH="$ROOT/.venv/bin:$PATH" VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
# A rerun starts afresh: the demo's own outputs of an earlier run (perhaps by another remit version,
# whose output and checkpoints this one would refuse to continue) are removed; nothing else is.
for d in "$OUT/annotated" "$OUT/train"; do
  if [[ -e "$d/.remit-output" || -e "$d/manifest.json" || -e "$d/latest_checkpointed_iteration.txt" ]]; then
    rm -rf "$d"
  fi
done

echo "== 1. tiny model pair (generated locally) and the bundled sample corpus"
python -m remit.annotate.demo --out "$OUT/models"
CORPUS="$(python -c 'from remit.annotate.demo import sample_corpus_path; print(sample_corpus_path())')"

echo "== 2. remit-annotate: score with both models (vLLM), write weights to Parquet shards"
remit-annotate --base "$OUT/models/base" --rl "$OUT/models/rl" --input "$CORPUS" \
  --output "$OUT/annotated" --seq-len 256 --rows-per-shard 32

echo "== 3. validate every shard, then the weight statistics"
remit-annotate validate "$OUT/annotated"
remit-annotate stats "$OUT/annotated"

echo "== 4. an HTML heatmap of tokens by weight"
remit-annotate show "$OUT/annotated" -o "$OUT/weights.html"

echo "== 5. remit-train: a short ReMiT mid-training run (static weights) on Megatron-Core"
remit-train --data "$OUT/annotated" --init-hf "$OUT/models/base" --weights static \
  --train-iters 20 --micro-batch-size 4 --global-batch-size 8 --lr 3e-4 --save "$OUT/train"

echo
echo "done: shards in $OUT/annotated, page $OUT/weights.html, training metrics $OUT/train/metrics.jsonl"
