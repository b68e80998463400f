"""Annotation: corpus -> token ids -> packed rows -> both models' log-probs -> ReMiT weights -> shards.

All vLLM imports live in `remit.annotate.engine_vllm`; importing this package loads no engine.
"""
