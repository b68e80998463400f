"""One check of remit on one GPU: its GPU tests, training speed and memory of a ~1B model, scoring speed.

- Model: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192, vocabulary
  128256, tied embeddings, llama3 RoPE), random weights (`remit-train --init-config`), bf16.
- Data: a synthetic annotation output (`make_output`: random documents of 200 to 2 x seq-len tokens
  packed into rows) with a small tokenizer trained on the bundled corpus, whose hash the output records.
- Steps, each in its own process with its own time limit, so that a failure or a hang leaves the others'
  results: `gpu-tests` (`pytest -m gpu`, one run per test file with a gpu mark), `train-sdpa` (4096
  tokens, `--attention sdpa`), `fit-long` (a short run at 8192 tokens: does it fit), `score-bf16` and
  `score-fp32` (the `hf` scoring engine over the documents of the same rows), `train-te` (only where
  Transformer Engine imports).
- Reported per step: tokens/s, model TFLOP/s and MFU (`remit.train.flops`: attention counted causally
  per document; the first 2 training steps are not timed), peak memory (torch.cuda.max_memory_allocated).
- Output: gpu_check.json and gpu_check.md (in $OUT if set, else benchmarks/out/), rewritten after every
  step, and each step's log under logs/.
- `--tiny`: a small model in fp32, a few steps on whatever device there is (the CPU here), to prove the
  script end to end in a few minutes.

    benchmarks/gpu_check.sh [--tiny] [--only train-sdpa,score-bf16] [--peak-tflops 989.4]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Llama-3.2-1B's config.json (the keys that shape the model), with tied embeddings and llama3 RoPE.
LLAMA_1B = {
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
TINY = {
    **LLAMA_1B,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 2048,
    "head_dim": 16,
}
#: In the order they run: the measurements first, then the tests (the slowest of which may meet its limit).
STEPS = ("train-sdpa", "fit-long", "score-bf16", "score-fp32", "gpu-tests", "train-te")
UNTIMED_STEPS = 2  # the first training steps warm up allocators, kernels and the shard cache


# --- inputs -------------------------------------------------------------------------------------------


def write_model_config(folder: Path, shape: dict[str, Any]) -> None:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        **shape,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))


def make_inputs(work: Path, shape: dict[str, Any], rows: dict[int, int]) -> dict[str, Any]:
    """The model folder (config.json + tokenizer) and a synthetic output of about `rows[seq]` rows for each
    sequence length `seq`."""
    from remit.annotate.demo import corpus_texts, train_tokenizer
    from remit.train.preflight import tokenizer_sha256

    try:
        from remit.shards.synthetic import make_output  # type: ignore[import-not-found]
    except ImportError:
        from tests.synthetic import make_output

    model = work / "model"
    if not (model / "tokenizer.json").exists():
        write_model_config(model, shape)
        train_tokenizer(corpus_texts(), vocab_size=1024).save_pretrained(model)
    tok_hash = tokenizer_sha256(model)
    data = {}
    for seq, n_rows in rows.items():
        out = work / f"data-{seq}"
        if not (out / "manifest.json").exists():
            make_output(
                out,
                n_docs=n_rows * (seq + 1) // (seq + 200) + 4,  # documents average about (200 + 2 seq) / 2 tokens
                seq_len=seq,
                vocab=1024,
                doc_len=(200, 2 * seq),
                rows_per_shard=64,
                seed=0,
                tokenizer_sha256=tok_hash,
            )
        data[seq] = out
    return {"model": model, "data": data}


def sample_doc_lengths(data: Path) -> list[list[int]]:
    """Per sample id: the lengths of the documents of its training row (padding left out)."""
    from remit.train.dataset import RemitDataset
    from remit.train.flops import doc_lengths_from_segments

    ds = RemitDataset(data, create_attention_mask=False)
    return [doc_lengths_from_segments(ds[i]["segment_ids"]).tolist() for i in range(len(ds))]


# --- children: one measurement each -------------------------------------------------------------------


def _peak_memory() -> dict[str, float]:
    import resource

    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


def train_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Train `steps` steps through remit-train's own flags; the final checkpoint is not written."""
    import torch

    from remit.common.flags import config_from_args
    from remit.train import trainer
    from remit.train.cli import train_parser
    from remit.train.config import TrainConfig

    trainer.save_checkpoint = lambda *args, **kwargs: None  # a 1B model's checkpoint is not what is measured
    argv = [
        "--data", spec["data"], "--save", spec["save"], "--init-config", spec["model"],
        "--weights", spec["weights"], "--attention", spec["attention"],
        "--train-iters", str(spec["steps"]), "--micro-batch-size", "1",
        "--global-batch-size", str(spec["global_batch"]), "--lr", "1e-5",
        "--log-interval", str(spec["steps"]), "--skip-validate", "--shuffle-shards", "1",
    ]  # fmt: skip
    if spec["bf16"]:
        argv.append("--bf16")
    cfg = config_from_args(TrainConfig, train_parser().parse_args(argv))
    steps: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        trainer.train(
            cfg,
            observer=lambda step, ids, rec: steps.append(
                {"step": step, "seconds": rec["step_time_s"], "sample_ids": [int(i) for i in ids]}
            ),
        )
        out: dict[str, Any] = {"ok": True}
    except torch.cuda.OutOfMemoryError as e:
        out = {"ok": False, "oom": True, "error": str(e).splitlines()[0][:300]}
    return {**out, "steps": steps, **_peak_memory()}


def score_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Score the documents of the first rows with the hf engine, `passes` times; the first is a warm-up."""
    import torch

    from remit.annotate.engines.base import EngineSettings
    from remit.annotate.engines.hf import HfScorer
    from remit.train.dataset import RemitDataset

    hf = Path(spec["hf_model"])
    if not (hf / "model.safetensors").exists() and not (hf / "model.safetensors.index.json").exists():
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(spec["model"])
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if spec["bf16"] else torch.float32)
        model.save_pretrained(hf)
        del model
    ds = RemitDataset(spec["data"], create_attention_mask=False)
    prompts: list[np.ndarray] = []
    for sid in range(min(spec["rows"], len(ds))):
        tokens, _, _, starts = ds.row(sid)
        bounds = [*np.asarray(starts, np.int64).tolist(), len(tokens)]
        prompts += [np.asarray(tokens[a:b]) for a, b in zip(bounds, bounds[1:])]
    scorer = HfScorer(hf, EngineSettings(dtype=spec["dtype"], max_model_len=spec["seq_len"] + 1))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(spec["passes"]):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scorer.score(prompts)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return {"ok": True, "pass_seconds": seconds, "prompt_lengths": [len(p) for p in prompts], **_peak_memory()}


def child_main(spec: dict[str, Any]) -> None:
    kind = spec.pop("kind")
    try:
        result = train_child(spec) if kind == "train" else score_child(spec)
    except Exception as e:
        traceback.print_exc()  # into the step's log
        result = {"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}", **_peak_memory()}
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: steps, limits, report ----------------------------------------------------------------


def run_limited(cmd: list[str], limit: float, log: Path, env: dict[str, str] | None = None) -> tuple[int, str, bool]:
    """Run `cmd` in its own process group; kill the whole group after `limit` seconds. Returns (exit code,
    stdout, timed out); stdout and stderr both go to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=f, text=True, start_new_session=True
        )
        try:
            stdout, _ = proc.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            timed_out = True
        f.write("\n--- stdout ---\n" + stdout)
    return (proc.returncode, stdout, timed_out)


def run_child(spec: dict[str, Any], limit: float, log: Path) -> dict[str, Any]:
    env = {"CUDA_DEVICE_MAX_CONNECTIONS": "1", "PYTHONWARNINGS": "ignore"}
    rc, stdout, timed_out = run_limited([sys.executable, __file__, "--child", json.dumps(spec)], limit, log, env)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = " | ".join(log.read_text().strip().splitlines()[-4:])[-600:]
    if timed_out:
        return {"ok": False, "error": f"no result within {limit:.0f} s (killed): {tail}"}
    return {"ok": False, "oom": "out of memory" in tail.lower(), "error": f"exit {rc}: {tail}"}


def gpu_tests(limit: float, logs: Path) -> dict[str, Any]:
    """`pytest -m gpu` over each test file that has a gpu mark, sharing the step's time limit."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    deadline = time.monotonic() + limit
    results = {}
    for f in files:
        left = deadline - time.monotonic()
        if left < 5:
            results[f] = {"ok": False, "summary": "not run: the step's time limit was used up"}
            continue
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f]
        rc, stdout, timed_out = run_limited(cmd, left, logs / f"gpu-tests-{Path(f).stem}.log")
        lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
        summary = lines[-1].strip("= ") if lines else ""
        # pytest exit 5: no test selected in that file (e.g. the gpu mark only in a skipped parametrisation)
        results[f] = {
            "ok": rc in (0, 5) and not timed_out,
            "summary": "killed at the time limit" if timed_out else summary,
        }
    return {"ok": all(r["ok"] for r in results.values()), "files": results}


def train_summary(r: dict[str, Any], arch: Any, docs: list[list[int]], seq: int, peak: float | None) -> dict[str, Any]:
    from remit.train.flops import mfu, step_flops

    timed = r.get("steps", [])[UNTIMED_STEPS:]
    if not r.get("ok") or not timed:
        return {**{k: v for k, v in r.items() if k != "steps"}, "steps_done": len(r.get("steps", []))}
    seconds = sum(s["seconds"] for s in timed)
    flops = sum(step_flops(arch, [n for i in s["sample_ids"] for n in docs[i]]) for s in timed)
    tokens = sum(len(s["sample_ids"]) * seq for s in timed)
    return {
        **{k: v for k, v in r.items() if k != "steps"},
        "timed_steps": len(timed),
        "step_seconds": [round(s["seconds"], 4) for s in r["steps"]],
        "tokens_per_s": tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "mfu": mfu(flops, seconds, peak),
    }


def score_summary(r: dict[str, Any], arch: Any, peak: float | None) -> dict[str, Any]:
    from remit.train.flops import forward_flops, mfu

    timed = r.get("pass_seconds", [])[1:]
    if not r.get("ok") or not timed:
        return r
    seconds = float(np.median(timed))
    lengths = r.pop("prompt_lengths")
    flops = forward_flops(arch, lengths)
    return {
        **r,
        "prompts": len(lengths),
        "tokens": sum(lengths),
        "tokens_per_s": sum(lengths) / seconds,
        "tflops": flops / seconds / 1e12,
        "mfu": mfu(flops, seconds, peak),
    }


def te_imports() -> bool:
    """Whether transformer_engine.pytorch imports (in a child: a broken install may abort the process)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import transformer_engine.pytorch"], capture_output=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def environment() -> dict[str, Any]:
    import torch

    def version(name: str) -> str | None:
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:
            return None

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({os.cpu_count()} cores)",
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "megatron_core": version("megatron-core"),
        "transformers": version("transformers"),
        "transformer_engine": version("transformer-engine") or version("transformer_engine"),
    }


def _fmt(v: Any, spec: str, unit: str = "") -> str:
    return "" if v is None else f"{v:{spec}}{unit}"


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    m = report["model"]
    peak = report["peak_tflops"]
    lines = [
        f"{env['device']}; torch {env['torch']} (CUDA {env['cuda']}), megatron-core {env['megatron_core']}, "
        f"transformers {env['transformers']}, Transformer Engine {env['transformer_engine']}, Python {env['python']}.",
        f"Model: {m['params'] / 1e6:,.1f}M parameters ({m['shape']['hidden_size']} hidden, "
        f"{m['shape']['num_hidden_layers']} layers, vocabulary {m['shape']['vocab_size']}), {m['dtype']}. "
        + (
            f"MFU over {peak:.1f} TFLOP/s ({report['peak_source']})."
            if peak
            else "No peak known for this device: no MFU."
        ),
        "",
        "| step | result | tokens/s | model TFLOP/s | MFU | peak memory | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in report["steps"].items():
        if "files" in r:
            note = "; ".join(f"{Path(f).name}: {x['summary']}" for f, x in r["files"].items())
        elif r.get("skipped"):
            note = r["skipped"]
        elif not r.get("ok"):
            note = ("out of memory: " if r.get("oom") else "") + str(r.get("error", ""))[:200]
        else:
            note = r.get("what", "")
        result = "skipped" if r.get("skipped") else ("ok" if r.get("ok") else "FAILED")
        mem = r.get("peak_allocated_gib", r.get("peak_rss_gib") if r.get("ok") else None)
        lines.append(
            f"| {name} | {result} | {_fmt(r.get('tokens_per_s'), ',.0f')} | {_fmt(r.get('tflops'), '.3g')} | "
            f"{_fmt(r.get('mfu') and 100 * r['mfu'], '.1f', '%')} | {_fmt(mem, '.1f', ' GiB')} | {note.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tiny", action="store_true", help="a small fp32 model, a few steps, any device (proves the script)"
    )
    p.add_argument(
        "--only", default=",".join(STEPS), help=f"comma-separated steps to run (default: all: {','.join(STEPS)})"
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else benchmarks/out)")
    p.add_argument("--work", type=Path, default=None, help="folder for the model and data (default: a temp dir)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per training row (default: 4096; tiny: 256)")
    p.add_argument("--fit-seq-len", type=int, default=None, help="the longer row to check (default: 8192; tiny: 512)")
    p.add_argument("--global-batch", type=int, default=8, help="rows per training step, micro-batch 1 (default: 8)")
    p.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help=f"steps per training run, the first {UNTIMED_STEPS} not timed (default: 8; tiny: 4)",
    )
    p.add_argument("--weights", default="online", help="remit-train --weights mode (default: online)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s for MFU (default: from the device name)",
    )
    p.add_argument(
        "--limits",
        default=None,
        help="seconds per step kind (default: train=150,fit=90,score=60,gpu-tests=60; tiny: 4 times as long, for a "
        "loaded CPU)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all steps together, inputs included (default: 270; tiny: 900)",
    )
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child_main(json.loads(args.child))
        return

    import torch

    from remit.common.atomic import write_json_atomic, write_text_atomic
    from remit.train.architecture import read_architecture
    from remit.train.flops import matmul_params, peak_tflops

    t_start = time.perf_counter()
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "out")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    limits_given = args.limits or "train=150,fit=90,score=60,gpu-tests=60"
    limit_of = {
        k: float(v) * (4 if args.tiny and not args.limits else 1)
        for k, v in (kv.split("=") for kv in limits_given.split(","))
    }
    seq = args.seq_len or (256 if args.tiny else 4096)
    fit_seq = args.fit_seq_len or (512 if args.tiny else 8192)
    gbs = 4 if args.tiny and args.global_batch == 8 else args.global_batch
    train_steps = args.train_steps or (4 if args.tiny else 8)
    budget = args.budget or (900 if args.tiny else 270)
    steps_wanted = [s for s in args.only.split(",") if s]
    unknown = set(steps_wanted) - set(STEPS)
    if unknown:
        p.error(f"--only: unknown steps {sorted(unknown)}; choose from {','.join(STEPS)}")
    shape = TINY if args.tiny else LLAMA_1B
    bf16 = not args.tiny
    env = environment()
    dtype = "bf16" if bf16 else "fp32"
    peak = (
        peak_tflops(env["device"], dtype, args.peak_tflops) if torch.cuda.is_available() or args.peak_tflops else None
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="remit-gpu-check-"))

    inputs = make_inputs(work, shape, {seq: gbs * train_steps + 8, fit_seq: 16})
    arch = read_architecture(inputs["model"])
    docs = {s: sample_doc_lengths(inputs["data"][s]) for s in (seq, fit_seq)}
    report: dict[str, Any] = {
        "environment": env,
        # Tied embeddings: the output layer is the embedding; the norms are the rest.
        "model": {
            "shape": shape,
            "params": matmul_params(arch) + (2 * arch.num_layers + 1) * arch.hidden_size,
            "dtype": dtype,
        },
        "peak_tflops": peak,
        "peak_source": "--peak-tflops"
        if args.peak_tflops
        else "vendor datasheet, dense, no sparsity (remit.train.flops.PEAKS)",
        "seq_len": seq,
        "global_batch": gbs,
        "inputs_seconds": round(time.perf_counter() - t_start, 1),
        "steps": {},
    }
    print(
        f"gpu_check: {env['device']}, inputs ready in {report['inputs_seconds']} s ({work}); results in {out}",
        flush=True,
    )

    def record(name: str, result: dict[str, Any]) -> None:
        report["steps"][name] = result
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json_atomic(out / "gpu_check.json", report)
        write_text_atomic(out / "gpu_check.md", markdown(report))
        shown = {k: v for k, v in result.items() if k not in ("step_seconds", "pass_seconds")}
        print(f"{name}: {json.dumps(shown, default=str)}", flush=True)

    train_spec = {
        "kind": "train", "model": str(inputs["model"]), "weights": args.weights, "bf16": bf16,
        "steps": train_steps, "global_batch": gbs,
    }  # fmt: skip
    for name in steps_wanted:
        t0 = time.perf_counter()
        left = budget - (t0 - t_start)
        if left < 15:
            record(name, {"skipped": f"not run: the check's budget of {budget:.0f} s was used up"})
            continue
        limits = {k: min(v, left) for k, v in limit_of.items()}
        if name == "gpu-tests":
            result = gpu_tests(limits["gpu-tests"], logs)
        elif name in ("train-sdpa", "train-te"):
            backend = name.split("-")[1]
            if backend == "te" and not te_imports():
                record(name, {"skipped": "Transformer Engine does not import here"})
                continue
            spec = {
                **train_spec,
                "data": str(inputs["data"][seq]),
                "save": str(work / f"run-{name}"),
                "attention": backend,
            }
            result = train_summary(run_child(spec, limits["train"], logs / f"{name}.log"), arch, docs[seq], seq, peak)
            result["what"] = f"{gbs} x {seq} tokens per step, --weights {args.weights}, --attention {backend}"
        elif name == "fit-long":
            spec = {
                **train_spec, "data": str(inputs["data"][fit_seq]), "save": str(work / "run-fit"),
                "attention": "sdpa", "steps": UNTIMED_STEPS + 2, "global_batch": 2,
            }  # fmt: skip
            result = train_summary(
                run_child(spec, limits["fit"], logs / f"{name}.log"), arch, docs[fit_seq], fit_seq, peak
            )
            result["what"] = (
                f"{fit_seq} tokens per row: {'fits' if result.get('ok') else 'does not run'} (2 x {fit_seq} per step)"
            )
        else:
            score_dtype = name.split("-")[1]
            spec = {
                "kind": "score", "model": str(inputs["model"]), "hf_model": str(work / "hf"), "bf16": bf16,
                "data": str(inputs["data"][seq]), "rows": gbs, "seq_len": seq, "passes": 3,
                "dtype": {"bf16": "bfloat16", "fp32": "float32"}[score_dtype],
            }  # fmt: skip
            peak_here = peak_tflops(env["device"], score_dtype, args.peak_tflops) if peak is not None else None
            result = score_summary(run_child(spec, limits["score"], logs / f"{name}.log"), arch, peak_here)
            result["what"] = (
                f"hf engine, {score_dtype}: the documents of {gbs} rows of {seq + 1} tokens, median of 2 passes"
            )
        result["seconds"] = round(time.perf_counter() - t0, 1)
        record(name, result)
    print("\n" + markdown(report), flush=True)


if __name__ == "__main__":  # dist_checkpointing's writer process re-imports __main__: keep this guard
    main()
