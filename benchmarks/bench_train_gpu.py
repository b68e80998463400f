"""A ~1B model on one GPU: tokens/s, MFU and peak memory of the real trainer in bf16, per weight mode.

- The model: a randomly initialised Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV
  heads, FFN 8192, vocabulary 128256, tied embeddings; 1.24B parameters), trained with the default
  attention path at 4096 tokens per sequence, micro-batch 1.
- Per weight mode: tokens/s, MFU (the trainer's model FLOPs, `remit.train.flops`: causal attention per
  document, over the GPU's dense bf16 peak) and
  peak memory; the weights' overhead over `none`; then whether the same model fits at 8192 tokens
  (and, if not, with --recompute-granularity selective).
- Each measurement is its own child process (a clean CUDA context, an out-of-memory error stays
  there); the final checkpoint save is skipped, the steps are timed. Without CUDA it prints
  "skipped" and exits 0.
- Targets: >= 35% MFU on an H100-class GPU without Transformer Engine, weight overhead <= 3%, fits
  at 8192.

    python benchmarks/bench_train_gpu.py [--gpu-steps 12] [--peak-tflops 989] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import child

#: Llama-3.2-1B's shape (hidden, layers, heads, kv_heads, ffn, vocab); plain RoPE with theta 500000.
LLAMA_1B = {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "ffn": 8192, "vocab": 128256}


def make_gpu_model(path: Path, shape: dict) -> Path:
    """A random Llama of `shape` with tied embeddings, saved in bf16 (no tokenizer: the trainer then
    checks the vocabulary size only)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return path
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["ffn"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=131072,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(path)
    return path


def measure(spec: dict) -> None:
    """One measurement, in the child: train `spec['steps']` steps and report times and peak memory."""
    import torch

    from remit.train import trainer
    from remit.train.config import TrainConfig

    # Timed steps only: the final checkpoint of a 1B model (bf16 weights + fp32 Adam) is not measured.
    trainer.save_checkpoint = lambda *args, **kwargs: None
    cfg = TrainConfig(
        data=spec["data"],
        weights=spec["mode"],
        init_hf=spec["model"],
        save=spec["save"],
        train_iters=spec["steps"],
        micro_batch_size=1,
        global_batch_size=spec["global_batch"],
        lr=1e-5,
        log_interval=spec["steps"],
        skip_validate=True,
        shuffle_shards=1,
        bf16=True,
        recompute_granularity=spec.get("recompute"),
    )
    times: list[float] = []
    torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train(cfg, observer=lambda step, ids, rec: times.append((rec["step_time_s"], rec["tflops"])))
        out = {"ok": True, "step_times": [t for t, _ in times], "step_tflops": [f for _, f in times]}
    except torch.cuda.OutOfMemoryError as e:
        out = {"ok": False, "oom": True, "error": str(e).splitlines()[0][:300]}
    out.update(
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
        device=torch.cuda.get_device_name(),
        total_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
    )
    child.report(out)


def run_child(spec: dict, timeout: int = 3600) -> dict:
    run = child.run(__file__, spec, env={"CUDA_DEVICE_MAX_CONNECTIONS": "1"}, timeout=timeout)
    shutil.rmtree(spec["save"], ignore_errors=True)
    if run.result is not None:
        return run.result
    tail = (run.stdout + run.stderr).strip().splitlines()[-5:]
    oom = "out of memory" in run.stderr.lower()
    return {"ok": False, "oom": oom, "error": f"exit {run.returncode}: " + " | ".join(tail)}


def benchmark(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        print("bench_train_gpu: skipped, no CUDA device (nothing measured)")
        return
    from remit.shards.synthetic import make_output

    values = [int(v) for v in args.gpu_shape.split(",")]
    shape = dict(zip(LLAMA_1B, values))
    device = torch.cuda.get_device_name()
    from remit.train.flops import peak_tflops

    peak = peak_tflops(device, "bf16", args.peak_tflops)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-train-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = make_gpu_model(work / "model", shape)
    data = {}
    for seq in (args.gpu_seq_len, args.gpu_fit_seq_len):
        data[seq] = work / f"data-{seq}"
        if not (data[seq] / "manifest.json").exists():
            make_output(
                data[seq],
                n_docs=12 + 4 * args.gpu_global_batch * seq // 1024,
                seq_len=seq,
                vocab=shape["vocab"],
                doc_len=(200, 2 * seq),
                rows_per_shard=64,
                seed=0,
            )
    print(f"inputs ready in {time.perf_counter() - t0:.0f} s ({work})", flush=True)

    head_dim = shape["hidden"] // shape["heads"]
    n_params = (
        shape["vocab"] * shape["hidden"]
        + shape["hidden"]
        + shape["layers"]
        * (  # tied embedding, final norm
            2 * shape["hidden"] * shape["heads"] * head_dim  # q, o
            + 2 * shape["hidden"] * shape["kv_heads"] * head_dim  # k, v
            + 3 * shape["hidden"] * shape["ffn"]  # gate, up, down
            + 2 * shape["hidden"]  # the two norms
        )
    )
    seq, gbs = args.gpu_seq_len, args.gpu_global_batch
    result: dict = {
        "device": device,
        "peak_bf16_tflops": peak,
        "model": {**shape, "params": n_params, "tied_embeddings": True},
        "seq_len": seq,
        "micro_batch_size": 1,
        "global_batch_size": gbs,
        "modes": {},
    }
    for mode in ("none", "static", "online"):
        spec = {"model": str(model), "data": str(data[seq]), "save": str(work / f"run-{mode}"), "mode": mode}
        r = run_child({**spec, "steps": args.gpu_steps, "global_batch": gbs})
        if r.get("ok"):
            timed = r["step_times"][2:]
            step = statistics.median(timed)
            # The trainer's own count (remit.train.flops): causal attention per document of the packed rows.
            tflops = statistics.median(r["step_tflops"][2:])
            r.update(
                median_step_s=step,
                tokens_per_s=gbs * seq / step,
                tflops=tflops,
                mfu=(tflops / peak) if peak else None,
            )
        result["modes"][mode] = r
        print(f"{mode}: {json.dumps({k: v for k, v in r.items() if k != 'step_times'})}", flush=True)
    if all(result["modes"][m].get("ok") for m in ("none", "static", "online")):
        base = result["modes"]["none"]["median_step_s"]
        result["overhead_vs_none"] = {m: result["modes"][m]["median_step_s"] / base - 1.0 for m in ("static", "online")}
    fit = {}
    for recompute in (None, "selective"):
        spec = {
            "model": str(model),
            "data": str(data[args.gpu_fit_seq_len]),
            "save": str(work / "run-fit"),
            "mode": "online",
            "steps": 3,
            "global_batch": 1,
            "recompute": recompute,
        }
        r = run_child(spec)
        fit[recompute or "no recompute"] = {
            k: r.get(k) for k in ("ok", "oom", "peak_allocated_gib", "peak_reserved_gib", "error") if k in r
        }
        print(
            f"fit at {args.gpu_fit_seq_len}, {recompute or 'no recompute'}: {fit[recompute or 'no recompute']}",
            flush=True,
        )
        if r.get("ok"):
            break
    result["fit"] = {"seq_len": args.gpu_fit_seq_len, **fit}

    print(f"\n{device}, {n_params / 1e9:.2f}B parameters, bf16, {gbs} x {seq} tokens per step (micro-batch 1):")
    print(f"  {'mode':7s} {'step':>9s} {'tokens/s':>10s} {'MFU':>7s} {'peak mem':>10s}")
    for mode, r in result["modes"].items():
        if not r.get("ok"):
            print(f"  {mode:7s} failed: {r.get('error')}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(
            f"  {mode:7s} {r['median_step_s']:8.3f}s {r['tokens_per_s']:10,.0f} {mfu:>7s} "
            f"{r['peak_allocated_gib']:8.1f} GiB"
        )
    for m, v in result.get("overhead_vs_none", {}).items():
        print(f"  {m} vs none: {100 * v:+.1f}% step time (target <= 3%)")
    for how, r in fit.items():
        verdict = "fits" if r.get("ok") else ("out of memory" if r.get("oom") else f"failed ({r.get('error')})")
        peak_mem = f", peak {r['peak_allocated_gib']:.1f} GiB" if r.get("peak_allocated_gib") else ""
        print(f"  {args.gpu_fit_seq_len} tokens, {how}: {verdict}{peak_mem}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    spec = child.child_spec(sys.argv[1:])
    if spec is not None:
        return measure(spec)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--gpu-shape",
        default=",".join(str(v) for v in LLAMA_1B.values()),
        help="hidden,layers,heads,kv_heads,ffn,vocab of the GPU model (default: Llama-3.2-1B's)",
    )
    p.add_argument("--gpu-seq-len", type=int, default=4096, help="tokens per sequence (default: 4096)")
    p.add_argument("--gpu-fit-seq-len", type=int, default=8192, help="the longer length to check (default: 8192)")
    p.add_argument("--gpu-global-batch", type=int, default=8, help="sequences per step, micro-batch 1 (default: 8)")
    p.add_argument("--gpu-steps", type=int, default=12, help="steps per mode, the first 2 not timed (default: 12)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's dense bf16 peak in TFLOP/s for MFU (default: from the device name, see remit.train.flops.PEAKS)",
    )
    p.add_argument("--work", type=Path, default=None, help="folder for the model and data (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    benchmark(p.parse_args())


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__
    main()
