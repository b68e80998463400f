"""What torch's scaled_dot_product_attention does on this machine: forward and backward of one
[1, 8 heads, S, 64] attention, each in a fresh subprocess.

- Peak RSS of is_causal=True (no mask) and of an explicit [S, S] bool mask, both restricted to the
  flash kernel (as the trainer's sdpa backend restricts them), and of the unfused math (scores
  materialised).

    python benchmarks/bench_attention_kernels.py [--seq-lens 1024,4096]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import child

MODES = ("causal", "mask", "math")


def measure(spec: dict[str, Any]) -> None:
    """One kernel at one length, in the child: report the memory above the inputs and the time."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seq_len, mode = spec["seq_len"], spec["mode"]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, seq_len, 64, generator=g, requires_grad=True) for _ in range(3))
    _, before = child.rss_mib()
    t0 = time.perf_counter()
    if mode == "math":
        blocked = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
        out = torch.softmax((q @ k.transpose(-1, -2) / 8).masked_fill(blocked, float("-inf")), -1) @ v
    else:
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).tril() if mode == "mask" else None
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mode == "causal")
    out.sum().backward()
    elapsed = time.perf_counter() - t0
    _, peak = child.rss_mib()
    child.report({"extra_mib": peak - before, "s": elapsed})


def main() -> None:
    spec = child.child_spec(sys.argv[1:])
    if spec is not None:
        return measure(spec)
    p = argparse.ArgumentParser(prog="bench_attention_kernels.py", description=__doc__)
    p.add_argument("--seq-lens", default="1024,4096")
    args = p.parse_args()
    print("forward + backward of one [1, 8, S, 64] attention, fp32; peak RSS above the inputs, fresh process each")
    for s in (int(x) for x in args.seq_lens.split(",")):
        for mode in MODES:
            run = child.run(__file__, {"seq_len": s, "mode": mode})
            if run.returncode != 0 or run.result is None:
                print(f"  S={s:5d} {mode:7s} failed: {run.stderr.strip().splitlines()[-1:]}")
                continue
            r = run.result
            print(f"  S={s:5d} {mode:7s} +{r['extra_mib']:8.1f} MiB  {r['s']:.3f} s")


if __name__ == "__main__":
    main()
