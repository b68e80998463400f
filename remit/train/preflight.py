"""Checks before a training run touches a GPU: the output validates and was made with this tokenizer.

A failed check raises `PreflightError` with every problem found, each naming the file (and row) and
the fix, so a launch fails in seconds instead of after the model is loaded on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remit.shards import ShardError, read_manifest
from remit.shards.manifest import repair_command
from remit.shards.tokenizer_hash import tokenizer_hash


class PreflightError(ValueError):
    """The data or the checkpoint cannot be trained on as given. The message lists what to fix."""


def validate_listing_of(root: str | Path, flag: str) -> None:
    """The start-up part of the validation (`remit.shards.validate.validate_listing`: the manifest and the
    shards it lists, none of them read); each shard gets the rest as a rank first reads it."""
    from remit.shards.validate import validate_listing

    problems = validate_listing(root)
    if problems:
        listed = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PreflightError(
            f"{root} ({flag}): the annotation output does not validate ({len(problems)} problems):\n  {listed}{more}\n"
            "Training refuses it. Fix the listed problems (or pass --skip-validate to rely on the per-shard "
            "checksum checks alone)."
        )


def tokenizer_sha256(hf_dir: str | Path) -> str | None:
    """The manifest-style hash of the tokenizer saved in `hf_dir`, or None if it holds no tokenizer."""
    hf_dir = Path(hf_dir)
    if not any((hf_dir / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return tokenizer_hash(AutoTokenizer.from_pretrained(str(hf_dir)))


def check_data_fits_model(data: str | Path, vocab_size: int, model_dir: str | Path) -> str | None:
    """Refuse data whose tokenizer is not the model's; return the tokenizer hash the dataset must carry."""
    manifest = read_manifest(data)
    where = Path(data) / "manifest.json"
    data_vocab = manifest.data.get("tokenizer", {}).get("vocab_size")
    if data_vocab is not None and int(data_vocab) > vocab_size:
        raise PreflightError(
            f"{where}: the output's tokenizer has {data_vocab} tokens but the model ({model_dir}) only "
            f"{vocab_size} embeddings. Annotate with this model's tokenizer, or start from the scored base model."
        )
    expected = tokenizer_sha256(model_dir)
    if expected is not None and expected != manifest.tokenizer_hash:
        raise PreflightError(
            f"{where}: scored with tokenizer {manifest.tokenizer_hash}, but {model_dir} holds tokenizer "
            f"{expected}. Token ids would mean other tokens: train from the base model the output was scored "
            "with, or annotate the corpus with this model's tokenizer."
        )
    return expected


#: The scoring passes each weight mode reads: `online` and `rho1` log p_RL, `static` and `shuffled` the weights.
MODE_PASSES = {
    "none": ("both", "rl", "none"),
    "online": ("both", "rl"),
    "rho1": ("both", "rl"),
    "static": ("both",),
    "shuffled": ("both",),
    "external": ("both", "rl", "none"),  # its weights come from beside the output
}


def check_weights_available(manifest: Any, mode: str, data: str | Path) -> None:
    """Refuse a weight mode the output's scoring passes cannot feed: a pack-only output (token ids, no
    scoring) trains only with `--weights none`; an RL-only one (`remit-annotate --score rl`) has log p_RL
    but no weights, and names the command that adds the base pass."""
    passes = manifest.passes
    if passes in MODE_PASSES.get(mode, ("both",)):
        return
    where = Path(data) / "manifest.json"
    if passes == "rl":
        raise PreflightError(
            f"{where}: the output holds the RL pass only (annotated with --score rl): log p_RL but no weights, which "
            f"--weights {mode} needs. Train it with --weights online, rho1 or none, or add the base pass: "
            f"`{repair_command(data)} --score both` (it scores only the base model and rewrites the shards)."
        )
    raise PreflightError(
        f"{where}: a pack-only output (token ids without log-probs or weights), so --weights {mode} has nothing "
        "to read. Train it with --weights none, or score the corpus with `remit-annotate --base ... --rl ...` "
        "for weighted modes."
    )


def check_resume_matches(
    state: dict[str, Any], data: str | Path, seed: int, objective: dict[str, Any] | None = None
) -> None:
    """A resumed run must read the same output in the same order and optimise the same objective (weight
    mode, eps, centring, global batch), or the trajectory is not a continuation."""
    manifest = read_manifest(data)
    if state.get("data_run_id") not in (None, manifest.run_id):
        raise PreflightError(
            f"{data}: output run {manifest.run_id}, but the checkpoint was trained on run {state['data_run_id']}. "
            "Pass the same --data to resume, or start a new run in another --save folder."
        )
    if state.get("seed") not in (None, seed):
        raise PreflightError(
            f"--seed {seed} differs from the checkpoint's seed {state['seed']}: the data order would change. "
            "Resume with the same seed, or start a new run in another --save folder."
        )
    for key, value in (objective or {}).items():
        if state.get(key) not in (None, value):
            raise PreflightError(
                f"{key} = {value!r} differs from the checkpoint's {state[key]!r}: the resumed run would optimise "
                f"another objective. Resume with the checkpoint's {key}, or start a new run in another --save folder."
            )


__all__ = [
    "PreflightError",
    "ShardError",
    "check_data_fits_model",
    "check_resume_matches",
    "check_weights_available",
    "tokenizer_sha256",
    "validate_listing_of",
]
