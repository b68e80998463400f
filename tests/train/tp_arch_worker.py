"""Two tensor-parallel ranks on gloo: each architecture's logits and full-state round trip, written to
OUT/tp_result.json by rank 0. Usage: tp_arch_worker.py OUT name=HF_DIR ..."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from remit.train import cpu_compat, distributed
    from remit.train.architecture import read_architecture
    from remit.train.convert import gather_full_state, hf_to_mcore, load_hf_into, read_hf_weights
    from remit.train.model import build_gpt_model, forward_tokens, transformer_config
    from tests.train.tiny_models import VOCAB, load_hf, packed_batch

    out = Path(sys.argv[1])
    created = distributed.init(2)
    cpu_compat.seed_rng(0)
    rank = parallel_state.get_tensor_model_parallel_rank()
    group = parallel_state.get_tensor_model_parallel_group()
    result = {}
    for item in sys.argv[2:]:
        name, hf_dir = item.split("=", 1)
        arch = read_architecture(hf_dir)
        model = build_gpt_model(arch, transformer_config(arch, tp=2), 64, "sdpa")
        load_hf_into(model, hf_dir, arch, rank, 2)
        model.eval()
        hf = load_hf(Path(hf_dir))
        ids = torch.randint(3, VOCAB, (2, 40), generator=torch.Generator().manual_seed(5))
        one = {"tokens": ids, "position_ids": torch.arange(40).expand(2, 40), "segment_ids": torch.zeros_like(ids)}
        batch = packed_batch([[17, 23], [8, 8, 24]], seed=6)
        with torch.no_grad():
            got = gather_from_tensor_model_parallel_region(forward_tokens(model, one, "sdpa"))
            packed = gather_from_tensor_model_parallel_region(forward_tokens(model, batch, "sdpa"))
            ref = hf(ids).logits
            worst = 0.0
            for r, start, n in batch["docs"]:
                alone = hf(batch["tokens"][r : r + 1, start : start + n]).logits[0]
                worst = max(worst, (packed[r, start : start + n] - alone).abs().max().item())
        full = gather_full_state(model, group)
        original = hf_to_mcore(read_hf_weights(hf_dir), arch)
        round_trip = max((full[k] - v).abs().max().item() for k, v in original.items())
        assert set(full) == set(original)
        result[name] = {"logits": (got - ref).abs().max().item(), "packed": worst, "round_trip": round_trip}
    if torch.distributed.get_rank() == 0:
        (out / "tp_result.json").write_text(json.dumps(result))
    distributed.teardown(created)


if __name__ == "__main__":
    main()
