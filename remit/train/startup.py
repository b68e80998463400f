"""The start-up of a training run: everything checked before the model is built, the model built and
resumed, the data and the run's sinks opened; one `Run` that `remit.train.trainer` advances.

- Rank 0 checks the folders remit will write (and takes the run folder's lease), the checkpoint's
  hashes and each output's manifest and listing; every rank fails together, in one line.
- No shard is read here: each rank validates and checksums a shard the first time it reads one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from remit.common.atomic import write_json_atomic
from remit.common.errors import describe_os_error
from remit.common.lease import Leases
from remit.shards import read_manifest
from remit.train import cpu_compat, processes
from remit.train.architecture import TEMPLATE_FILES, check_parallel, read_architecture
from remit.train.attention import backend_note, resolve_backend
from remit.train.checkpoint import (
    AsyncSaver,
    check_optimizer_layout,
    iteration_dir,
    latest_iteration,
    load_checkpoint,
    optimizer_layout,
    read_common_state,
    verify_checkpoint,
)
from remit.train.config import TrainConfig
from remit.train.convert import check_hf_checkpoint
from remit.train.dataset import RemitDataset
from remit.train.engine import Engine, build_engine
from remit.train.evaluate import EvalPlan, plan_eval
from remit.train.flops import peak_tflops
from remit.train.folders import (
    check_export_folder,
    check_run_folder,
    claim_run_folder,
    hold_run_folder,
)
from remit.train.guard import StepGuard
from remit.train.loader import BatchLoader
from remit.train.metrics import MetricsLog, Progress
from remit.train.preflight import (
    PreflightError,
    check_data_fits_model,
    check_resume_matches,
    check_weights_available,
    validate_listing_of,
)
from remit.train.random_init import prepare_template, random_hf_state
from remit.train.sampler import SampleOrder
from remit.train.schedule import check_schedule, resume_scheduler, saved_schedule
from remit.train.sinks import Sink, open_sinks
from remit.train.stopping import StopRule

T = TypeVar("T")

#: Sub-folder of the save folder holding the HF config and tokenizer the run started from.
HF_TEMPLATE = "hf_template"
#: File in the save folder naming the architecture and the attention backend (whose layer spec names
#: the checkpoint's tensors), for export.
MODEL_FILE = "model.json"


def _check_save_folder(save: Path) -> None:
    """The run folder can be created and written, before any work (a read-only or full disk fails here)."""
    save.mkdir(parents=True, exist_ok=True)
    probe = save / f".remit-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    finally:
        probe.unlink(missing_ok=True)


def _check_output(
    root: Path, what: str, template: Path, vocab_size: int, max_positions: int, cfg: TrainConfig
) -> str | None:
    """One annotation output's start-up checks, none of which reads a shard: its sequence length against
    the model, its listing (manifest, sample ids, totals, no stray shard), its tokenizer against the
    model's. Returns the tokenizer hash the dataset must carry. Shards are checked as they are read."""
    seq_len = read_manifest(root).seq_len
    if seq_len > max_positions:
        raise PreflightError(
            f"{root / 'manifest.json'}: rows of seq_len {seq_len} tokens, but the model ({template}) has "
            f"{max_positions} positions (max_position_embeddings); annotate with --seq-len of at most "
            f"{max_positions}, or train a model with more positions."
        )
    if not cfg.skip_validate:
        validate_listing_of(root, what)
    return check_data_fits_model(root, vocab_size, template)


def _on_rank0(work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 only; its failure (a user error, or an OS error such as a read-only or full
    folder) stops every rank together, with rank 0's one line. Returns rank 0's result on rank 0, None
    elsewhere (what the other ranks need is broadcast by the caller)."""
    failure: list[Any] = [None]
    result: T | None = None
    if dist.get_rank() == 0:
        try:
            result = work()
        except (ValueError, FileNotFoundError) as e:  # PreflightError, ShardError, FolderError, ...
            failure[0] = str(e)
        except OSError as e:
            failure[0] = describe_os_error(e)
    dist.broadcast_object_list(failure, src=0)
    if failure[0]:
        raise PreflightError(failure[0])
    return result


def _claim_folders(cfg: TrainConfig) -> Leases[str] | None:
    """Before anything is written: the run folder and the export folder are ones remit may write into,
    no other job holds the run folder, and the run folder carries remit's marker. Rank 0 holds the lease."""

    def claim() -> Leases[str]:
        check_run_folder(cfg.save, cfg.init_hf)
        if cfg.export_hf is not None:
            check_export_folder(cfg.export_hf, cfg.init_hf, cfg.save)
        _check_save_folder(cfg.save)
        lease = hold_run_folder(cfg.save)
        claim_run_folder(cfg.save)
        return lease

    return _on_rank0(claim)


def _preflight(
    cfg: TrainConfig, template: Path, vocab_size: int, max_positions: int, checkpoint: Path | None
) -> str | None:
    """Check, on rank 0, the checkpoint's hashes, and the data and eval outputs (their manifests and
    listings, not their shards); every rank fails together. Returns the tokenizer hash the data must carry.
    Start-up reads no shard: each rank validates the shards it trains on as it first reads them."""

    def check() -> str | None:
        if checkpoint is not None:
            verify_checkpoint(checkpoint, trust=cfg.trust_checkpoint)
        data_hash = _check_output(cfg.data, "--data", template, vocab_size, max_positions, cfg)
        if cfg.eval_data is not None:
            eval_hash = _check_output(cfg.eval_data, "--eval-data", template, vocab_size, max_positions, cfg)
            if eval_hash != data_hash:
                raise PreflightError(
                    f"{cfg.eval_data / 'manifest.json'}: --eval-data was scored with tokenizer {eval_hash}, "
                    f"--data with {data_hash}; evaluate on an output annotated with the same tokenizer."
                )
        return data_hash

    shared: list[Any] = [_on_rank0(check)]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def _prepare_random_template(init_config: Path, manifest_tokenizer: dict[str, Any], dst: Path) -> None:
    """Rank 0 writes the HF template of a randomly initialised run; a failure stops every rank together
    (the broadcast also keeps the other ranks from reading the template before it is written)."""
    _on_rank0(lambda: prepare_template(init_config, manifest_tokenizer, dst))


def _copy_template(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATE_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def _check_layout(run_dir: Path, attention: str) -> None:
    """A checkpoint saved under Transformer Engine's layer spec names its tensors differently from one
    saved under the local spec (sdpa, dense): resume only within the same family."""
    path = run_dir / MODEL_FILE
    saved = json.loads(path.read_text()).get("attention", "sdpa") if path.exists() else "sdpa"
    if (saved == "te") != (attention == "te"):
        raise PreflightError(
            f"{path}: the checkpoint was written with --attention {saved}, this run uses {attention}; their "
            f"tensor layouts differ, so resume with --attention {saved} (or export to HF and start from that)"
        )


@dataclass
class Run:
    """Everything a running job holds: set up by `prepare`, advanced by `train_step`."""

    cfg: TrainConfig
    rank: int
    device: torch.device
    arch: Any
    attention: str
    manifest: Any
    dataset: RemitDataset
    engine: Engine
    loader: BatchLoader
    gbs: int
    n_micro: int
    loss_opts: dict[str, Any]
    objective: dict[str, Any]
    optimizer_layout: dict[str, Any]
    guard: StepGuard
    log: MetricsLog
    sinks: list[Sink]
    progress: Progress
    stop: StopRule
    eval_set: RemitDataset | None
    eval_plan: EvalPlan | None
    saver: AsyncSaver | None
    lease: Leases[str] | None
    peak_tflops: float | None
    """One device's peak for MFU (--peak-tflops, or the GPU table); None: MFU is not reported."""
    iteration: int = 0
    consumed: int = 0
    tokens: int = 0
    record: dict[str, Any] | None = None
    saved: Path | None = None
    stopped: str | None = None
    last_checkpoint: list[Path | None] = field(default_factory=lambda: [None])

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def seq_len(self) -> int:
        return self.dataset.seq_len

    def close(self) -> None:
        self.loader.close()
        self.log.close()
        for sink in self.sinks:
            sink.close()
        if self.lease is not None:
            self.lease.__exit__(None, None, None)


# --- setup -----------------------------------------------------------------------------------------


def _model_source(cfg: TrainConfig, load_dir: Path, resume_it: int | None) -> tuple[Path, Any]:
    """The HF folder whose config (and, for a fresh run, weights) the run starts from, and the manifest
    when it had to be read for a random initialisation."""
    if resume_it is not None:
        return load_dir / HF_TEMPLATE, None
    if cfg.init_config is not None:
        manifest = read_manifest(cfg.data)  # the tokenizer the shards record is the random model's
        template = cfg.save / HF_TEMPLATE
        _prepare_random_template(cfg.init_config, manifest.data.get("tokenizer", {}), template)
        return template, manifest
    if cfg.init_hf is not None:
        return cfg.init_hf, None
    raise PreflightError(f"{load_dir}: no checkpoint to resume and no --init-hf; pass --init-hf DIR.")


def prepare(cfg: TrainConfig) -> Run:
    """Check everything that can be checked before the model is built, build it, resume if a checkpoint
    is there: the whole start-up of a run, on every rank."""
    rank = dist.get_rank()
    device = cpu_compat.device()
    processes.no_orphans()
    processes.catch_interrupts()
    lease = _claim_folders(cfg)
    try:
        return _prepare(cfg, rank, device, lease)
    except BaseException:
        if lease is not None:
            lease.__exit__(None, None, None)
        raise


def _prepare(cfg: TrainConfig, rank: int, device: torch.device, lease: Leases[str] | None) -> Run:
    load_dir = Path(cfg.load or cfg.save)
    resume_it = latest_iteration(load_dir)
    checkpoint = iteration_dir(load_dir, resume_it) if resume_it is not None else None
    random_init = resume_it is None and cfg.init_config is not None
    template, manifest = _model_source(cfg, load_dir, resume_it)
    arch, attention = _check_model(cfg, template, load_dir, resume_it, random_init)
    if manifest is None:
        manifest = read_manifest(cfg.data)
    check_weights_available(manifest, cfg.weights, cfg.data)  # after the model checks, before the data checks
    tokenizer_hash = _preflight(cfg, template, arch.vocab_size, arch.max_positions, checkpoint)

    # Each rank validates and checksums the shards it reads, as it first reads them (remit.train.dataset).
    dataset = _open_data(cfg.data, tokenizer_hash, cfg, external_weights=cfg.external_weights)
    order = SampleOrder(dataset.shard_rows, seed=cfg.seed, shuffle_shards=cfg.shuffle_shards)
    gbs, n_micro = cfg.check_batch(cfg.data_parallel_size(dist.get_world_size()), len(dataset))  # before the model
    loss_opts, objective = _objective(cfg, manifest, gbs)
    if resume_it is not None:  # what the checkpoint was trained with, before any tensor is loaded
        _check_resume(cfg, load_dir, resume_it, objective)

    cpu_compat.seed_rng(cfg.seed)
    init_state = random_hf_state(template, arch, cfg.seed) if random_init else None
    init_hf = template if resume_it is None and not random_init else None
    engine = build_engine(
        cfg, arch, attention, dataset.seq_len, init_hf, init_state=init_state, resuming=resume_it is not None
    )
    layout = engine.layout
    layout_of_optimizer = optimizer_layout(cfg.use_distributed_optimizer, layout.tp_size, layout.pp_size)
    iteration, consumed, tokens = (
        _resume(cfg, engine, load_dir, layout_of_optimizer) if resume_it is not None else (0, 0, 0)
    )
    if rank == 0:
        _write_run_files(cfg, template, attention, arch)
        _announce(cfg, arch, attention, len(dataset), dataset.seq_len, layout, gbs, n_micro, iteration, template)

    eval_set, eval_plan = _open_eval(cfg, tokenizer_hash, dataset.seq_len, gbs, layout)
    loader = BatchLoader(
        dataset,
        order,
        global_batch=gbs,
        micro_batch=cfg.micro_batch_size,
        dp_rank=layout.dp_rank,
        dp_size=layout.dp_size,
        consumed_samples=consumed,
        device=device,
        steps=max(cfg.train_iters - iteration, 0),  # no shard is read for a step the run will not take
    )
    guard_hint: list[Path | None] = [checkpoint]

    def resume_hint() -> str:
        if guard_hint[0] is None:
            return f"No checkpoint was saved yet in {cfg.save}: fix the cause and start again."
        return (
            f"The last checkpoint, {guard_hint[0]}, is intact: fix the cause (for bad data, "
            "`remit-annotate validate` lists it) and resume from it."
        )

    guard = StepGuard(
        cfg.weights,
        loss_opts["eps"],
        loss_opts["center"],
        resume_hint,
        rank=rank,
        dp_rank=layout.dp_rank,
        seed=cfg.seed,
        keep_ratio=loss_opts["keep_ratio"],
    )
    return Run(
        cfg=cfg,
        rank=rank,
        device=device,
        arch=arch,
        attention=attention,
        manifest=manifest,
        dataset=dataset,
        engine=engine,
        loader=loader,
        gbs=gbs,
        n_micro=n_micro,
        loss_opts=loss_opts,
        objective=objective,
        optimizer_layout=layout_of_optimizer,
        guard=guard,
        log=MetricsLog(cfg.save, resume_iteration=iteration, enabled=rank == 0),
        sinks=open_sinks(cfg.tensorboard_dir, cfg.wandb_project, cfg.save, cfg.to_dict()) if rank == 0 else [],
        progress=Progress(cfg.train_iters, iteration, cfg.log_interval, enabled=rank == 0),
        stop=StopRule(cfg.exit_signal_handler, cfg.exit_duration_in_mins, device),
        eval_set=eval_set,
        eval_plan=eval_plan,
        saver=AsyncSaver(cfg.save, cfg.keep_last) if cfg.async_save else None,
        lease=lease,
        peak_tflops=_device_peak(cfg),
        iteration=iteration,
        consumed=consumed,
        tokens=tokens,
        last_checkpoint=guard_hint,
    )


def _check_model(
    cfg: TrainConfig, template: Path, load_dir: Path, resume_it: int | None, random_init: bool
) -> tuple[Any, str]:
    """The architecture and attention backend, checked before any data is read: the parallel layout divides
    heads, KV groups, FFN and vocabulary; a fresh run's HF tensors have the expected names and shapes; a
    resumed run keeps its backend family."""
    arch = read_architecture(template)
    check_parallel(arch, cfg.tensor_model_parallel_size)
    attention = resolve_backend(cfg.attention)
    if resume_it is None and not random_init:
        check_hf_checkpoint(template, arch)
    elif resume_it is not None:
        _check_layout(load_dir, attention)
    return arch, attention


def _check_resume(cfg: TrainConfig, load_dir: Path, resume_it: int, objective: dict[str, Any]) -> None:
    """What the checkpoint was trained with matches this run (data, seed, objective, schedule)."""
    common = read_common_state(load_dir, resume_it)
    check_resume_matches(dict(common.get("train_state", {})), cfg.data, cfg.seed, objective)
    check_schedule(
        saved_schedule(dict(common.get("train_state", {})), dict(common["scheduler"])),
        cfg,
        str(iteration_dir(load_dir, resume_it)),
    )


def _resume(cfg: TrainConfig, engine: Engine, load_dir: Path, layout: dict[str, Any]) -> tuple[int, int, int]:
    """Load the latest checkpoint of `load_dir` into the engine: (iteration, consumed samples, tokens)."""
    check_optimizer_layout(load_dir, layout)
    state, scheduler_state = load_checkpoint(load_dir, engine.model, engine.optimizer)
    resume_scheduler(engine.scheduler, scheduler_state, int(state["iteration"]), override=cfg.override_schedule)
    return int(state["iteration"]), int(state["consumed_samples"]), int(state["tokens"])


def _objective(cfg: TrainConfig, manifest: Any, gbs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The loss function's options, and the objective a checkpoint records (a resume must match it)."""
    eps = cfg.eps if cfg.eps is not None and cfg.weights == "online" else manifest.eps
    center = cfg.center or manifest.center
    keep_ratio = cfg.keep_ratio if cfg.weights == "rho1" else 1.0
    loss_opts: dict[str, Any] = {"eps": eps, "center": center, "seed": cfg.seed, "keep_ratio": keep_ratio}
    objective = {"weights": cfg.weights, "eps": eps, "center": center, "global_batch_size": gbs}
    if cfg.weights == "rho1":
        objective["keep_ratio"] = keep_ratio
    return loss_opts, objective


def _open_eval(
    cfg: TrainConfig, tokenizer_hash: str | None, seq_len: int, gbs: int, layout: Any
) -> tuple[RemitDataset | None, EvalPlan | None]:
    """The eval output (checked like the data) and this rank's part of each evaluation."""
    if cfg.eval_data is None:
        return None, None
    eval_set = _open_data(cfg.eval_data, tokenizer_hash, cfg, seq_len=seq_len)
    plan = plan_eval(
        len(eval_set),
        global_batch=gbs,
        micro_batch=cfg.micro_batch_size,
        dp_rank=layout.dp_rank,
        dp_size=layout.dp_size,
        eval_iters=cfg.eval_iters,
    )
    return eval_set, plan


def _device_peak(cfg: TrainConfig) -> float | None:
    """--peak-tflops, else the table's figure for this GPU in the run's precision; None on a CPU."""
    if cfg.peak_tflops is not None or not torch.cuda.is_available():
        return cfg.peak_tflops
    return peak_tflops(torch.cuda.get_device_name(), "bf16" if cfg.bf16 else "fp32")


def _open_data(
    root: Path,
    tokenizer_hash: str | None,
    cfg: TrainConfig,
    seq_len: int | None = None,
    external_weights: Path | None = None,
) -> RemitDataset:
    """A dataset that checks its manifest now and each shard as it is first read (validated unless
    --skip-validate, checksummed always)."""
    return RemitDataset(
        root,
        seq_len=seq_len,
        tokenizer_hash=tokenizer_hash,
        cache_shards=cfg.shuffle_shards,
        create_attention_mask=False,
        check_footers=False,
        validate=not cfg.skip_validate,
        external_weights=external_weights,
    )


def _write_run_files(cfg: TrainConfig, template: Path, attention: str, arch: Any) -> None:
    cfg.save.mkdir(parents=True, exist_ok=True)
    _copy_template(template, cfg.save / HF_TEMPLATE)
    write_json_atomic(cfg.save / MODEL_FILE, {"attention": attention, "architecture": arch.to_dict()})


def _announce(
    cfg: TrainConfig,
    arch: Any,
    attention: str,
    samples: int,
    seq_len: int,
    layout: Any,
    gbs: int,
    n_micro: int,
    iteration: int,
    template: Path,
) -> None:
    if iteration:
        start = f"resuming at step {iteration}"
    elif cfg.init_config is not None:
        start = f"random init from {cfg.init_config} (seed {cfg.seed})"
    else:
        start = f"from {template}"
    print(
        f"remit-train: {arch.model_type}, {attention} attention, {cfg.weights} weights, {samples} samples "
        f"of {seq_len} tokens, DP {layout.dp_size} x TP {layout.tp_size} x PP {layout.pp_size}, "
        f"{'bf16' if cfg.bf16 else 'fp32'}, global batch {gbs} ({n_micro} micro-batches of "
        f"{cfg.micro_batch_size} per rank), {start}",
        flush=True,
    )
    note = backend_note(attention)
    if note:
        print(note, flush=True)
