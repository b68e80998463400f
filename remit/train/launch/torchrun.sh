#!/usr/bin/env bash
# Single node: one process per GPU (or per CPU slot with gloo), then `remit-train` with your flags.
#
#   NPROC=8 remit/train/launch/torchrun.sh --data OUT --weights online --init-hf BASE \
#       --train-iters 5000 --save RUN --micro-batch-size 4 --global-batch-size 256 --lr 3e-4 \
#       --lr-warmup-iters 100 --tensor-model-parallel-size 2
#
# NPROC: processes on this node (default: visible GPUs, or 2 without any). DP size = NPROC / (TP x PP).
set -euo pipefail

if [[ -z "${NPROC:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    NPROC=$(nvidia-smi --list-gpus | wc -l)
  else
    NPROC=2
  fi
fi
# One compute thread per process unless told otherwise: ranks share the node's cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# NCCL needs this for mcore's gradient-reduction ordering on GPUs; harmless with gloo.
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"

exec python -m torch.distributed.run --standalone --nnodes=1 --nproc-per-node="${NPROC}" \
  -m remit.train "$@"
