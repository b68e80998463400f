"""Token ids to text, decoded with the tokenizer the output was scored with (never another one)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remit.common.requires import install_hint


def tokenizer_path(manifest: dict[str, Any], root: Path, override: Path | None = None) -> Path | None:
    """The tokenizer folder to decode with: `override`, else the manifest's path (as written, or
    relative to the output folder), or None when there is none."""
    if override is not None:
        if not Path(override).is_dir():
            raise ValueError(f"--tokenizer {override}: no such folder")
        return Path(override)
    recorded = (manifest.get("tokenizer") or {}).get("path")
    if not recorded:
        return None
    for candidate in (Path(recorded), root / recorded):
        if candidate.is_dir():
            return candidate
    return None


def load_tokenizer(manifest: dict[str, Any], root: Path, override: Path | None = None) -> tuple[Any, str]:
    """(tokenizer or None, a note saying what the token texts are). Loads offline; never downloads."""
    path = tokenizer_path(manifest, root, override)
    if path is None:
        recorded = (manifest.get("tokenizer") or {}).get("path")
        why = (
            f"the manifest's tokenizer path {recorded!r} does not exist here"
            if recorded
            else "the manifest records no tokenizer path"
        )
        return None, f"token ids not decoded: {why} (pass --tokenizer DIR)"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, f"token ids not decoded: transformers is not installed ({install_hint('inspect')})"
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises OSError, ValueError and others for unusable folders
        return None, f"token ids not decoded: cannot load the tokenizer in {path} ({type(e).__name__}: {e})"
    from remit.shards.tokenizer_hash import tokenizer_hash

    recorded_hash = (manifest.get("tokenizer") or {}).get("sha256")
    if recorded_hash and recorded_hash.startswith("sha256:") and tokenizer_hash(tok) != recorded_hash:
        # Decoding with another tokenizer would print confident but wrong token texts.
        return None, (
            f"token ids not decoded: the tokenizer in {path} is not the one the output was scored "
            f"with (its hash differs from the manifest's {recorded_hash}); pass --tokenizer DIR"
        )
    return tok, f"token ids decoded with the tokenizer in {path}"


def token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str | None]:
    """Each id decoded on its own (a byte-level piece of a multi-byte character shows as U+FFFD)."""
    if tokenizer is None:
        return [None] * len(ids)
    return [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in ids]
