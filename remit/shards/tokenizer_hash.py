"""The tokenizer hash recorded in the manifest. It lives here, in the leaf, because the annotation
writes it and the trainer checks it; it needs no tokenizer library, only the tokenizer object."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_tokenizer(tokenizer: Any) -> dict[str, Any]:
    """What defines how text becomes ids: the backend's full definition (vocab, merges, added and
    special tokens, normalizer, pre-tokenizer) plus the special-token map. Padding/truncation
    settings are dropped: they do not change ids."""
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        return {"backend": spec, "special_tokens": specials}
    return {"vocab": sorted(tokenizer.get_vocab().items()), "special_tokens": specials}


def tokenizer_hash(tokenizer: Any) -> str:
    blob = json.dumps(canonical_tokenizer(tokenizer), sort_keys=True, ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()
