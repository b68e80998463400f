"""Mid-training with ReMiT weights on Megatron-Core: dataset over the shards, weighted loss, trainer.

All Megatron imports live under this package; the CPU compatibility layer is `remit.train.cpu_compat`.
"""
