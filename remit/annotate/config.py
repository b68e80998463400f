"""The annotation job's configuration: the single list of its flags, validated when built.

- Every field is declared with its flag, help text and group (`remit.common.flags.option`); closed
  choices are `Literal` types. The CLI, the run identity, finalize's resume command and the
  launcher's worker commands are all generated from these declarations.
- Fields marked run-local do not change the output; the others form the run's identity, which is
  recorded in the manifest and hashed into the run id.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from remit.annotate.engines.base import INSTALL_HINT, Dtype, EngineName, EngineSettings
from remit.annotate.tokenize import BosPolicy, EosPolicy
from remit.common.flags import check_choices, library_only, option, run_local_fields
from remit.shards.weights import Center, check_eps

#: The scoring passes a run makes (the manifest's `passes`; "none" is a pack-only output).
Score = Literal["both", "rl"]

_DATA = "models and data"
_PACKING = "packing and weights"
_ENGINE = "engine"
_RUN = "run"


@dataclass
class AnnotateConfig:
    # --- models and data ---
    base: Path = option(help="base checkpoint folder (Hugging Face format)", group=_DATA)
    """Base checkpoint (Hugging Face folder): the model mid-training starts from."""
    rl: Path = option(help="RL-tuned sibling of --base (same tokenizer)", group=_DATA)
    """RL-tuned sibling of the base checkpoint; it must use the same tokenizer."""
    inputs: list[Path] = option(
        flag="--input",
        help="corpus: .jsonl/.jsonl.gz, .parquet, folders of .txt, or `datasets` save_to_disk folders",
        group=_DATA,
    )
    """Corpus: JSONL (plain/gzip), Parquet, folders of .txt, or `datasets` save_to_disk folders; read in
    the order given (folders in sorted path order)."""
    output: Path = option(help="output folder (manifest.json + shard-*.parquet)", group=_DATA, run_local=True)
    """Output folder: manifest.json + shard-NNNNN.parquet, and _work/ while the run is unfinished."""
    text_field: str = option("text", help="field/column holding the text (default: text)", group=_DATA)
    """Field (JSONL) or column (Parquet, `datasets`) holding a document's text."""
    id_field: str = option(
        "id", help="field holding the document id (default: id; absent: '<file>:<record>')", group=_DATA
    )
    """Field holding the document id; a record without it gets '<file>:<record number>'."""
    token_field: str | None = option(
        None, help="pre-tokenized input: field with token ids, used as they are (default: off)", group=_DATA
    )
    """Set for pre-tokenized input: the field with token ids (used as they are, no tokenizer run)."""
    split: list[str] = option(
        default_factory=list,
        help="split of a DatasetDict input to read (repeatable; needed when it has several)",
        group=_DATA,
    )
    """Splits to read from a `datasets` DatasetDict folder; one with a single split is read without it."""
    strict: bool = option(
        False, help="fail on the first unusable record instead of skipping it", group=_DATA, run_local=True
    )
    """Fail on the first unusable record instead of skipping and counting it."""
    # --- packing and weights ---
    seq_len: int = option(4096, help="training sequence length in tokens; rows hold seq-len + 1", group=_PACKING)
    """Training sequence length; rows hold seq_len + 1 tokens (inputs and the shifted labels)."""
    eps: float = option(0.2, help="clip half-width: weights in [1-eps, 1+eps] (default 0.2)", group=_PACKING)
    """Clip half-width: weights lie in [1 - eps, 1 + eps]; in [0, 1)."""
    center: Center = option(
        "row",
        help="centre the log-prob difference per row (training sequence) or per document segment",
        group=_PACKING,
    )
    """Centre the log-prob difference per row (training sequence) or per segment (document part)."""
    bos: BosPolicy = option(
        "auto", help="prepend BOS to each document (auto: as the tokenizer's template does)", group=_PACKING
    )
    """Prepend BOS to each document: always, never, or auto (when the tokenizer's template does)."""
    eos: EosPolicy = option("always", help="append EOS to each document", group=_PACKING)
    """Append EOS to each document (it separates documents once they are packed)."""
    rows_per_shard: int = option(
        2048, help="rows per shard = the unit of work and resume (default 2048)", group=_PACKING
    )
    """Rows per shard; a shard is the unit of work, resume and parallelism."""
    score: Score = option(
        "both",
        help="models to score: both (weights for every training mode) or rl (log p_RL only, half the cost: "
        "enough for `remit-train --weights online` and `none`; a later run with `--score both` adds the base pass)",
        group=_PACKING,
        run_local=True,
    )
    """The scoring passes to run: both, or the RL model only (the output then holds log p_RL and no weights;
    `online` and `none` training read it). Not part of the run's identity: a later run of the same job with
    `both` scores just the base pass and completes the output, with the bytes of a one-shot `both` run."""
    # --- engine ---
    engine: EngineName = option("vllm", help="scoring engine (default vllm)", group=_ENGINE)
    """Scoring engine: vllm (default) or hf (the transformers reference)."""
    dtype: Dtype = option(
        "float32",
        help="scoring dtype for both models (default float32: bf16 errors exceed the weight's range)",
        group=_ENGINE,
    )
    """Scoring dtype, the same for both models. bf16 log-probs are off by more than the range in which
    the weight is not clipped, hence float32 by default."""
    max_batch_tokens: int = option(
        0,
        help="tokens per engine step; bounds the [tokens x vocab] log-softmax (0 = from vocab size)",
        group=_ENGINE,
    )
    """Tokens per engine step (vLLM's max_num_batched_tokens, the hf engine's batch budget); 0 sizes it
    from the vocabulary so that the [tokens x vocab] log-softmax stays bounded."""
    kv_cache_gib: float = option(1.0, help="vLLM KV cache on CPU, GiB (default 1)", group=_ENGINE)
    """vLLM's KV cache on a CPU, in GiB (on a GPU, gpu_memory_utilization applies instead)."""
    gpu_memory_utilization: float = option(0.85, help="vLLM on GPU (default 0.85)", group=_ENGINE)
    """Share of GPU memory vLLM may take for weights, activations and KV cache."""
    tensor_parallel_size: int = option(1, help="vLLM tensor parallel size (default 1)", group=_ENGINE)
    """GPUs per model replica (vLLM tensor parallelism)."""
    # --- run ---
    keep_work: bool = option(
        False,
        help="keep _work/ (planned units, records) after finalize",
        group=_RUN,
        run_local=True,
    )
    """Keep the planned units and completion records under _work/ after finalize."""
    progress_every_s: float = option(
        10.0,
        flag="--progress-every",
        help="seconds between progress lines (default 10)",
        group=_RUN,
        run_local=True,
    )
    """Seconds between progress lines."""
    verbose: bool = option(
        False,
        help="show the engines' and libraries' own log lines and warnings (default: progress and errors only)",
        group=_RUN,
        run_local=True,
    )
    """Let vLLM's INFO lines and the libraries' warnings through; by default only remit's progress lines,
    notes and errors are printed."""
    plan_timeout_s: float = library_only(6 * 3600, run_local=True)
    """How long a worker of rank > 0 waits for rank 0 to finish planning, in seconds."""
    lease_heartbeat_s: float = library_only(15.0, run_local=True)
    """Seconds between the refreshes of a worker's unit leases (`remit.annotate.lease`)."""
    lease_stale_s: float = library_only(120.0, run_local=True)
    """A lease written on another host whose heartbeat is older than this is taken over."""

    def __post_init__(self) -> None:
        self.base, self.rl, self.output = Path(self.base), Path(self.rl), Path(self.output)
        self.inputs = [Path(p) for p in self.inputs]
        check_choices(self)
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {self.seq_len}")
        check_eps(self.eps)
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1; got {self.rows_per_shard}")
        if not self.inputs:
            raise ValueError("inputs: give at least one input path")
        if not 0 < self.lease_heartbeat_s < self.lease_stale_s:
            raise ValueError(
                f"lease_heartbeat_s ({self.lease_heartbeat_s}) must be positive and below lease_stale_s "
                f"({self.lease_stale_s})"
            )

    def check_paths(self) -> None:
        """Fail before any work starts when a model folder is missing or unusable."""
        for name, path in (("--base", self.base), ("--rl", self.rl)):
            if not path.is_dir():
                raise ValueError(f"{name} {path}: no such model folder")
            if not (path / "config.json").exists():
                raise ValueError(f"{name} {path}: no config.json; expected a Hugging Face model folder")
            if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
                raise ValueError(f"{name} {path}: no *.safetensors or *.bin weight files")
        if self.engine == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(f"--engine vllm, but vLLM is not installed. {INSTALL_HINT}")
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"--output {self.output}: exists and is not a folder")
        if self.output.exists() and not os.access(self.output, os.W_OK):
            raise ValueError(f"--output {self.output}: not writable by this user; choose a writable folder")
        parent = next((p for p in self.output.absolute().parents if p.exists()), None)
        if not self.output.exists() and parent is not None and not os.access(parent, os.W_OK):
            raise ValueError(f"--output {self.output}: cannot be created in {parent} (not writable); choose another")

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            dtype=self.dtype,
            max_model_len=self.seq_len + 1,
            max_batch_tokens=self.max_batch_tokens,
            kv_cache_gib=self.kv_cache_gib,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base"], d["rl"], d["output"] = str(self.base.resolve()), str(self.rl.resolve()), str(self.output)
        d["inputs"] = [str(p.resolve()) for p in self.inputs]
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that determine the output (all but the run-local ones), as recorded in the manifest."""
        d = self.to_dict()
        for k in RUN_LOCAL_FIELDS:
            d.pop(k)
        return d


#: Fields that do not change the output: left out of the run id, so they may differ between workers.
RUN_LOCAL_FIELDS = run_local_fields(AnnotateConfig)
