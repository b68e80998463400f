"""Start-up cost of `remit-train --init-hf`: building the GPTModel and filling it from an HF checkpoint.

One process per measurement (TP = PP = 1, a world of one), modes interleaved over the rounds:
  - `full`: the previous path, reproduced here: Megatron initialises every weight (each full fp32
    matrix built, then split), then every tensor of the checkpoint is read into one dict, converted
    whole (`hf_to_mcore`: qkv and fc1 concatenated, a second copy), and copied in (`tp_slice`);
  - `sliced`: Megatron's initialisation as before, then `load_hf_into`, which reads each parameter's
    slice on its own (at TP = 1 the slices are whole tensors: this isolates the dict and the copy);
  - `new`: what `build_engine` does now: no Megatron initialisation, then `load_hf_into`.
Each child reports the time of build and load and, over that span, minus the value before it: its
peak RSS (VmHWM, reset after the imports; it includes the checkpoint's pages that safetensors maps)
and its peak anonymous RSS (RssAnon sampled every millisecond: the memory the process allocated). The model is a Llama of a few hundred MB in bfloat16 (the
dtype large checkpoints ship in), trained in fp32.

    PYTHONPATH=. python benchmarks/bench_init.py [--hidden 768] [--layers 6] [--vocab 32000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("full", "sliced", "new")


def make_model(root: Path, hidden: int, layers: int, vocab: int) -> Path:
    """A random Llama (GQA, untied) saved in bfloat16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(root / "model")
    return root / "model"


# -- child: one measurement ------------------------------------------------------------------------


def _status(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class _AnonPeak:
    """The peak of RssAnon (memory the process allocated, without the checkpoint's file pages that
    safetensors maps), sampled every millisecond on a thread."""

    def __init__(self) -> None:
        import threading

        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status("RssAnon"))


def _load_full(model, hf_dir: Path, arch) -> None:
    """The previous `load_hf_into` at TP = 1: the whole checkpoint in a dict, converted whole."""
    import torch

    from remit.train.convert import hf_to_mcore, read_hf_weights, to_model_names, tp_slice

    params = dict(model.named_parameters())
    full = to_model_names(hf_to_mcore(read_hf_weights(hf_dir), arch, str(hf_dir)), set(params))
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tp_slice(name, full[name], 0, 1).to(param.dtype))


def child(mode: str, hf_dir: Path) -> dict[str, float]:

    from remit.train import cpu_compat, distributed
    from remit.train.architecture import read_architecture
    from remit.train.convert import load_hf_into
    from remit.train.model import build_gpt_model, transformer_config

    created = distributed.init(1)
    cpu_compat.seed_rng(0)
    arch = read_architecture(hf_dir)
    config = transformer_config(arch, perform_initialization=mode != "new")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: the peak from here on
    before, anon_before = _status("VmRSS"), _status("RssAnon")
    anon = _AnonPeak()
    t0 = time.perf_counter()
    model = build_gpt_model(arch, config, 2048)
    t1 = time.perf_counter()
    if mode == "full":
        _load_full(model, hf_dir, arch)
    else:
        load_hf_into(model, hf_dir, arch, 0, 1)
    t2 = time.perf_counter()
    peak, anon_peak = _status("VmHWM"), anon.stop()
    params = sum(p.numel() for p in model.parameters())
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    del model
    distributed.teardown(created)
    return {
        "build_s": t1 - t0,
        "load_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_mib": peak - before,
        "anon_peak_mib": anon_peak - anon_before,
        "params": params,
        "checksum": checksum,
    }


# -- parent ----------------------------------------------------------------------------------------


def run(hf_dir: Path, mode: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(hf_dir)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: child failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=768, help="hidden size (heads of 64)")
    ap.add_argument("--layers", type=int, default=6, help="decoder layers")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per mode, interleaved")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="bench_init-") as tmp:
        hf_dir = make_model(Path(tmp), args.hidden, args.layers, args.vocab)
        size = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) / 2**20
        (hf_dir / "model.safetensors").read_bytes()  # in the page cache for every mode alike
        results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
                results[mode].append(run(hf_dir, mode))
                print(f"round {r + 1} {mode}: {json.dumps(results[mode][-1])}", flush=True)
    sums = {m: {x["checksum"] for x in rs} for m, rs in results.items()}
    assert len(set().union(*sums.values())) == 1, f"the modes loaded different weights: {sums}"
    params = results["new"][0]["params"]
    print(
        f"\nmodel: hidden {args.hidden}, {args.layers} layers, vocabulary {args.vocab}: {params / 1e6:.1f}M "
        f"parameters, checkpoint {size:.0f} MiB (bfloat16), model {params * 4 / 2**20:.0f} MiB (fp32); "
        f"{args.rounds} rounds, median per mode"
    )
    med = {
        m: {
            k: statistics.median(x[k] for x in rs)
            for k in ("build_s", "load_s", "total_s", "peak_mib", "anon_peak_mib")
        }
        for m, rs in results.items()
    }
    print("| mode | build | load | build + load | peak RSS | peak anonymous RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m in MODES:
        d = med[m]
        print(
            f"| `{m}` | {d['build_s']:.2f} s | {d['load_s']:.2f} s | {d['total_s']:.2f} s | {d['peak_mib']:.0f} MiB "
            f"| {d['anon_peak_mib']:.0f} MiB |"
        )
    full, new = med["full"], med["new"]
    model_mib = params * 4 / 2**20
    print(
        f"\nnew / full: time {new['total_s'] / full['total_s']:.2f}x, peak RSS {new['peak_mib'] / full['peak_mib']:.2f}x, "
        f"peak anonymous RSS {new['anon_peak_mib'] / full['anon_peak_mib']:.2f}x. In units of the fp32 model "
        f"({model_mib:.0f} MiB): peak RSS full {full['peak_mib'] / model_mib:.2f}, new {new['peak_mib'] / model_mib:.2f}; "
        f"anonymous full {full['anon_peak_mib'] / model_mib:.2f}, new {new['anon_peak_mib'] / model_mib:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}))


if __name__ == "__main__":
    main()
