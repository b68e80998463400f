"""Run the trainer and record which samples each rank trained on (launched by the tests, with torchrun
or as one plain process). Usage: dp_worker.py DATA SAVE RECORD_PREFIX TP [key=value ...]"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from remit.train.config import TrainConfig
from remit.train.trainer import train


def main() -> None:
    data, save, record, tp, *extra = sys.argv[1:]
    opts = {
        "weights": "online",
        "train_iters": 6,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "lr": 1e-3,
        "lr_warmup_iters": 2,
        "seed": 7,
        "shuffle_shards": 2,
    }
    for kv in extra:
        k, v = kv.split("=", 1)
        opts[k] = type(opts[k])(v) if k in opts else (int(v) if v.isdigit() else v)
    seen: dict[int, list[int]] = {}
    rank: list[int] = []

    def observer(step, ids, _record):
        if not rank:
            rank.append(dist.get_rank())
        seen[step] = [int(i) for i in ids]

    cfg = TrainConfig(data=data, save=save, tensor_model_parallel_size=int(tp), **opts)
    train(cfg, observer=observer)
    with open(f"{record}.rank{rank[0]}.json", "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":  # dist_checkpointing's writer re-imports __main__
    main()
