"""The `hf` engine: a plain transformers forward pass, the reference the `vllm` engine is checked against.

- Prompts are batched by a token budget, longest first, padded on the right.
- The decoder body runs once per batch; the observed tokens' log-probs are then taken chunk by chunk
  over positions (lm_head, a float32 log-softmax, a gather), so no [tokens x vocab] float32 tensor is
  ever built for a whole batch.
- Results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from remit.annotate.engines.base import EngineSettings, Scorer, check_model_dir, with_first_nan

#: Padded tokens per forward pass when `settings.max_batch_tokens` is 0. On the CPU 8k tokens keep both
#: cores busy (larger batches were no faster); on a GPU the body's activations stay small at 32k.
CPU_BATCH_TOKENS = 8192
GPU_BATCH_TOKENS = 32768

#: Bytes allowed for one chunk of [positions x vocab] logits (model dtype) plus their float32 log-softmax.
CPU_LOGIT_CHUNK_BYTES = 256 << 20
GPU_LOGIT_CHUNK_BYTES = 1 << 30


def logit_chunk_positions(vocab_size: int, chunk_bytes: int) -> int:
    """Positions per lm_head chunk so that logits (<= 4 B) plus the fp32 log-softmax (4 B) fit `chunk_bytes`."""
    return max(1, chunk_bytes // (8 * max(1, vocab_size)))


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group prompt indices, longest first, so that each group's padded size (count x longest) <= budget.

    A prompt longer than the budget forms a group of its own. Sorting keeps padding small.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the group's first prompt sets its padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class HfScorer(Scorer):
    """One causal LM loaded with transformers, scoring token-id prompts (see `remit.annotate.engines.base`)."""

    def __init__(self, model_dir: str | Path, settings: EngineSettings) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        self.model_dir = check_model_dir(model_dir)
        self.settings = settings
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model: Any
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, settings.dtype))
        except Exception as e:
            raise RuntimeError(
                f"{self.model_dir}: transformers could not load the model ({type(e).__name__}: {e}). "
                "Check that the folder holds a causal LM saved with save_pretrained."
            ) from e
        self.model = model.to(self.device).eval()
        self.body = self.model.base_model
        self.lm_head = self.model.get_output_embeddings()
        config = self.model.config
        self.vocab_size = int(self.lm_head.weight.shape[0])
        # Models that post-process lm_head's output in their forward (Cohere scales, Gemma 2 soft-caps):
        # the chunked path must do the same to give the model's own distribution.
        self.logit_scale = getattr(config, "logit_scale", None)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        gpu = self.device.type == "cuda"
        self.batch_tokens = settings.max_batch_tokens or (GPU_BATCH_TOKENS if gpu else CPU_BATCH_TOKENS)
        self.chunk_positions = logit_chunk_positions(
            self.vocab_size, GPU_LOGIT_CHUNK_BYTES if gpu else CPU_LOGIT_CHUNK_BYTES
        )
        self.version = transformers.__version__

    # -- scoring -------------------------------------------------------------------------------------

    def _score_scorable(self, prompts: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(prompts)
        for group in token_batches([a.size for a in prompts], self.batch_tokens):
            for i, lp in zip(group, self._score_batch([prompts[i] for i in group])):
                out[i] = lp
        return out

    def _score_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        lengths = np.array([a.size for a in batch])
        width = int(lengths.max())
        ids = np.zeros((len(batch), width), np.int64)
        for r, a in enumerate(batch):
            ids[r, : a.size] = a
        input_ids = torch.from_numpy(ids).to(self.device)
        # Right padding leaves every real token's causal context unchanged; the mask is passed only when
        # there is padding, so that equal-length batches keep the faster maskless attention path.
        mask = None
        if (lengths != width).any():
            mask = torch.from_numpy(np.arange(width)[None, :] < lengths[:, None]).to(self.device, torch.long)
        with torch.no_grad():
            hidden = self.body(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            # Position t predicts token t+1: keep positions 0..n-2 of each prompt, in row-major order.
            valid = torch.from_numpy(np.arange(width - 1)[None, :] < (lengths - 1)[:, None]).to(self.device)
            h = hidden[:, :-1][valid]
            targets = input_ids[:, 1:][valid]
            del hidden
            flat = torch.empty(h.shape[0], dtype=torch.float32, device=self.device)
            for start in range(0, h.shape[0], self.chunk_positions):
                stop = min(start + self.chunk_positions, h.shape[0])
                flat[start:stop] = self._target_logprobs(h[start:stop], targets[start:stop])
        flat_np = flat.cpu().numpy()
        ends = np.cumsum(lengths - 1)
        return [with_first_nan(flat_np[end - (n - 1) : end]) for n, end in zip(lengths, ends)]

    def _target_logprobs(self, h: Any, targets: Any) -> Any:
        import torch

        logits = self.lm_head(h)
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, targets[:, None]).squeeze(-1)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "name": "hf",
            "version": self.version,
            "dtype": self.settings.dtype,
            "settings": {
                "device": self.device.type,
                "max_model_len": self.settings.max_model_len,
                "batch_tokens": self.batch_tokens,
                "logit_chunk_positions": self.chunk_positions,
                "seed": self.settings.seed,
            },
        }

    def close(self) -> None:
        import gc

        import torch

        for name in ("model", "body", "lm_head"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
