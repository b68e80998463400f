"""remit: RL-guided mid-training (ReMiT) weights, scored offline and streamed into Megatron-Core."""

__version__ = "0.1.0"
