"""The two model folders: their identity, and every check that can be made before the first forward pass.

- `model_info`: what the manifest records of a model, with a weights hash over config.json and the
  weight files (each file's sha256 cached like the inputs', `remit.annotate.hashcache`).
- `inspect_model`: reads config.json, the safetensors headers (never the tensors) and the index of a
  sharded checkpoint; refuses a header that is unreadable, a tensor whose bytes lie beyond the end of
  its file (a truncated download), a tensor the index names but its file lacks, and a tensor whose
  shape is not the one the config implies (the config's model built on the meta device, no memory).
- `check_pair`: the base and RL models score the same token ids, so their output vocabularies must have
  the same size and hold the tokenizer's; and `check_positions`: the rows fit both models' positions.

Both models are checked before any work starts, so a bad RL model never costs a base pass.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remit.annotate.hashcache import HashCache, combine

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
INDEX_NAME = "model.safetensors.index.json"
#: Bytes per element of the safetensors dtypes.
DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
#: A header larger than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 << 20
#: Config keys that bound a model's positions, as the engines read them (the smallest present wins).
POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
#: RoPE types whose max_position_embeddings already includes the scaling (vLLM applies `factor` to the others).
SCALED_ROPE_TYPES = ("su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")


class ModelError(ValueError):
    """A model folder that cannot be scored as given; the message names the file and the fix."""


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(f for f in model_dir.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def model_info(model_dir: Path, cache: HashCache | None = None) -> dict[str, Any]:
    """Path, architecture and a content hash of the weight files (and config) of a model folder.

    The hash is a sha256 over one line per file (config.json, then the weight files by name): its name
    and the file's own sha256."""
    config = json.loads((model_dir / "config.json").read_text())
    c = cache if cache is not None else HashCache()
    files = _weight_files(model_dir)
    lines = [f"{f.name}\0{c.sha256(f)}\n" for f in [model_dir / "config.json", *files]]
    if cache is None:
        c.flush()
    return {
        "path": str(model_dir.resolve()),
        "weights_sha256": combine(lines),
        "weight_files": [f.name for f in files],
        "architecture": (config.get("architectures") or ["unknown"])[0],
        "model_type": config.get("model_type"),
        "vocab_size": config.get("vocab_size"),
        "torch_dtype": str(config.get("torch_dtype") or config.get("dtype")),
    }


def legacy_weights_sha256(model_dir: Path) -> str:
    """The weights hash of manifests written before the per-file hash: one sha256 streamed over each
    file's name, a NUL byte and its bytes."""
    import hashlib

    h = hashlib.sha256()
    for f in [model_dir / "config.json", *_weight_files(model_dir)]:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


# -- weight files ----------------------------------------------------------------------------------------


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from a safetensors file's header, after checking that every tensor's
    bytes lie inside the file. Reads the header only."""
    fix = "the file is damaged or truncated: download or save the checkpoint again"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path}: {size} bytes, too short for a safetensors file; {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise ModelError(f"{path}: its header claims {n:,} bytes in a {size:,}-byte file; {fix}")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"{path}: the safetensors header is not valid JSON ({e}); {fix}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: the safetensors header is not a JSON object; {fix}")
    data_bytes = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{path}: tensor {name!r} has a malformed header entry; {fix}") from None
        if dtype in DTYPE_BYTES and end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ModelError(f"{path}: tensor {name!r} of shape {list(shape)} {dtype} spans {end - begin} bytes; {fix}")
        if end > data_bytes or begin < 0 or begin > end:
            raise ModelError(
                f"{path}: tensor {name!r} lies at bytes {begin:,}-{end:,} of the data, but the file holds only "
                f"{data_bytes:,}; {fix}"
            )
        out[name] = (dtype, shape)
    return out


def _checkpoint_tensors(model_dir: Path, role: str) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape from the safetensors headers (None for a pickled checkpoint, whose headers
    cannot be read without running it)."""
    files = _weight_files(model_dir)
    st = [f for f in files if f.suffix == ".safetensors"]
    if not files:
        raise ModelError(f"--{role} {model_dir}: no *.safetensors or *.bin weight files")
    if not st:
        for f in files:  # torch's format is a zip archive: a cut file has no central directory
            if not zipfile.is_zipfile(f):
                raise ModelError(
                    f"--{role} {f}: not a complete checkpoint archive (truncated or damaged); save it again"
                )
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, Path] = {}
    for f in st:
        for name, (_, shape) in safetensors_header(f).items():
            shapes[name] = shape
            where[name] = f
    index = model_dir / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(
                f"{index}: unreadable index ({type(e).__name__}: {e}); save the checkpoint again"
            ) from None
        for name, file in weight_map.items():
            if not (model_dir / file).exists():
                raise ModelError(f"{index}: tensor {name!r} is in {file}, which is missing; download it again")
            if name not in shapes or where[name].name != file:
                raise ModelError(
                    f"{index}: tensor {name!r} should be in {file}, which lacks it; save the checkpoint again"
                )
    return shapes


# -- the config's model ----------------------------------------------------------------------------------


@dataclass
class ModelFacts:
    """What the checks found out about one model folder."""

    path: Path
    role: str
    config: dict[str, Any]
    vocab_rows: int | None
    """Rows of the output projection (the log-softmax runs over them): from the checkpoint where readable."""
    positions: float
    """Positions the model has (inf when its config names none)."""
    positions_key: str | None
    vllm_positions: float
    """What vLLM derives as the longest sequence (positions, RoPE scaling, tokenizer's model_max_length)."""
    learned_positions: bool
    """A position table with one row per position (nothing beyond it can be computed)."""
    notes: list[str] = field(default_factory=list)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def max_positions(config: dict[str, Any]) -> tuple[float, str | None]:
    """The smallest position bound the config names, and its key (inf, None when none)."""
    text = _text_config(config)
    best, key = math.inf, None
    for k in POSITION_KEYS:
        v = text.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < best:
            best, key = v, k
    if isinstance(text.get("model_max_length"), int):  # Cohere: this key wins in vLLM
        best, key = text["model_max_length"], "model_max_length"
    return best, key


def _rope_factor(config: dict[str, Any]) -> float:
    text = _text_config(config)
    params = text.get("rope_parameters") or text.get("rope_scaling")
    if not isinstance(params, dict):
        return 1.0
    layers = [p for p in params.values() if isinstance(p, dict)] or [params]
    factor = 1.0
    for p in layers:
        kind = p.get("rope_type") or p.get("type")
        if kind not in SCALED_ROPE_TYPES and isinstance(p.get("factor"), (int, float)):
            factor = float(p["factor"])
    return factor


def _tokenizer_max_length(model_dir: Path) -> float:
    try:
        value = json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return math.inf
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.inf


def _meta_model(model_dir: Path) -> Any:
    """The config's causal LM built on the meta device (no memory), or None when transformers cannot."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _compare_shapes(
    model: Any, ckpt: dict[str, tuple[int, ...]], facts: ModelFacts
) -> tuple[str | None, list[tuple[str, tuple[int, ...], tuple[int, ...]]], list[str]]:
    """(checkpoint name of the output projection, shape mismatches, missing tensors)."""
    prefix = getattr(model, "base_model_prefix", "") or ""

    def find(name: str) -> str | None:
        candidates = [name]
        if prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
        elif prefix:
            candidates.append(f"{prefix}.{name}")
        return next((c for c in candidates if c in ckpt), None)

    params = dict(model.named_parameters())  # tied parameters appear once
    tied = getattr(model, "_tied_weights_keys", None)
    aliases: dict[str, list[str]] = {}
    if isinstance(tied, dict):  # target -> source: a checkpoint may hold either name
        for target, source in tied.items():
            aliases.setdefault(source, []).append(target)
            aliases.setdefault(target, []).append(source)
    found = {n: find(n) or next((a for a in map(find, aliases.get(n, [])) if a), None) for n in params}
    if sum(v is not None for v in found.values()) < len(params) / 2:
        facts.notes.append(
            f"{facts.path}: the checkpoint's tensor names do not follow the config's model; shapes not checked"
        )
        return None, [], []
    wrong = [
        (ck, tuple(ckpt[ck]), tuple(params[n].shape))
        for n, ck in found.items()
        if ck is not None and tuple(ckpt[ck]) != tuple(params[n].shape)
    ]
    import re

    optional = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or []]
    missing = [n for n, ck in found.items() if ck is None and not any(p.search(n) for p in optional)]
    out = model.get_output_embeddings()
    out_name = next((n for n, p in params.items() if out is not None and p is out.weight), None)
    return (found.get(out_name) if out_name else None), wrong, missing


def inspect_model(model_dir: Path, role: str) -> ModelFacts:
    """Check one model folder without loading its weights (see the module docstring)."""
    flag = f"--{role}"
    cfg_path = model_dir / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{flag} {cfg_path}: unreadable ({type(e).__name__}: {e}); save the model again") from None
    if not isinstance(config, dict):
        raise ModelError(f"{flag} {cfg_path}: not a JSON object; save the model again")
    ckpt = _checkpoint_tensors(model_dir, role)
    positions, key = max_positions(config)
    facts = ModelFacts(
        path=model_dir,
        role=role,
        config=config,
        vocab_rows=_text_config(config).get("vocab_size"),
        positions=positions,
        positions_key=key,
        vllm_positions=min(positions * _rope_factor(config), _tokenizer_max_length(model_dir)),
        learned_positions=False,
    )
    try:
        model = _meta_model(model_dir)
    except Exception as e:  # an architecture this transformers does not build: the engine will say more
        facts.notes.append(f"{flag} {model_dir}: shapes not checked ({type(e).__name__}: {str(e)[:120]})")
        return facts
    # GPT-2's wpe, OPT's embed_positions (two extra rows), BERT-style position_embeddings.
    facts.learned_positions = any(
        ("pos" in n.lower() or "wpe" in n.lower()) and p.ndim == 2 and positions <= p.shape[0] <= positions + 2
        for n, p in model.named_parameters()
    )
    if ckpt is None:
        return facts
    out_name, wrong, missing = _compare_shapes(model, ckpt, facts)
    if wrong:
        name, got, want = wrong[0]
        raise ModelError(
            f"{flag} {model_dir}: tensor {name!r} has shape {list(got)} in the checkpoint, but config.json implies "
            f"{list(want)} ({len(wrong)} such tensors). The weights do not belong to this config (e.g. a resized "
            "vocabulary without its config): save the model again with save_pretrained."
        )
    if missing:
        raise ModelError(
            f"{flag} {model_dir}: {len(missing)} tensors of the model are not in its weight files (first: "
            f"{missing[0]!r}); the checkpoint is incomplete: download or save it again."
        )
    if out_name is not None:
        facts.vocab_rows = int(ckpt[out_name][0])
    return facts


# -- the pair --------------------------------------------------------------------------------------------


def check_pair(base: ModelFacts, rl: ModelFacts, tokenizer_size: int) -> None:
    """Both models score the same token ids: their output vocabularies must hold the tokenizer's ids and be
    of one size (a log-prob over more entries is not comparable)."""
    for m in (base, rl):
        if m.vocab_rows is not None and m.vocab_rows < tokenizer_size:
            raise ModelError(
                f"--{m.role} {m.path}: the model has {m.vocab_rows} output rows, fewer than its tokenizer's "
                f"{tokenizer_size} tokens; the tokenizer does not belong to this model."
            )
    if base.vocab_rows is not None and rl.vocab_rows is not None and base.vocab_rows != rl.vocab_rows:
        raise ModelError(
            f"the base model ({base.path}) has {base.vocab_rows} output rows, the RL model ({rl.path}) "
            f"{rl.vocab_rows}: the weight compares two log-probs over one vocabulary. Point --rl at the RL-tuned "
            "sibling of --base (a resized vocabulary needs a re-scored base model from the same resize)."
        )


def check_positions(m: ModelFacts, seq_len: int, engine: str) -> bool:
    """Refuse rows longer than the model's positions. Returns True when vLLM must be allowed past the
    config's bound (by one or two positions whose outputs are never used, see the comment)."""
    # A row of seq_len + 1 tokens is scored as prompts of at most that length: token i's log-prob comes from
    # position i - 1, so the scored tokens use positions 0..seq_len-1, as training does. The row's last
    # position (and vLLM's one generated token after it) is computed but never used.
    if seq_len > m.positions:
        raise ModelError(
            f"--seq-len {seq_len} is longer than the {m.role} model's {m.positions_key} = {int(m.positions)} "
            f"({m.path}); the scores would use positions the model never learned. Use --seq-len "
            f"{int(m.positions)} or less."
        )
    need = seq_len + (2 if engine == "vllm" else 1)
    limit = m.vllm_positions if engine == "vllm" else m.positions
    if need <= limit:
        return False
    if m.learned_positions:
        raise ModelError(
            f"--seq-len {seq_len}: the {engine} engine computes {need} positions per row (the row's "
            f"{seq_len + 1} tokens" + (" and one generated token" if engine == "vllm" else "") + f"), but the "
            f"{m.role} model ({m.path}) has a table of {int(m.positions)} positions. Use --seq-len "
            f"{int(m.positions) - need + seq_len} or less."
        )
    return engine == "vllm"


def allow_long_vllm_rows() -> None:
    """Let vLLM compute the unused last positions (rotary positions have no table to run past)."""
    os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")


__all__ = [
    "ModelError",
    "ModelFacts",
    "allow_long_vllm_rows",
    "check_pair",
    "check_positions",
    "inspect_model",
    "legacy_weights_sha256",
    "max_positions",
    "model_info",
    "safetensors_header",
]
