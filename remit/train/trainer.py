"""The mid-training loop on Megatron-Core: GPTModel, mcore DDP, Megatron's optimizer and schedule.

- One optimizer step = ``global_batch / (micro_batch * DP)`` micro-batches through
  `get_forward_backward_func` (the 1F1B pipeline schedule when there are several stages).
- The loss function returns (sum of w*l, valid-token count, report) and
  ``calculate_per_token_loss=True`` makes Megatron divide the gradient once by the global valid-token
  count, so the objective is the paper's: sum over the global batch of w*l over the number of tokens.
- The model, its precision wrapper, DDP, optimizer and schedule come from `remit.train.engine`.
- Every step passes `remit.train.guard` (finite loss, finite gradient norm) before the optimizer
  applies it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from remit.common.atomic import write_json_atomic
from remit.common.errors import describe_os_error
from remit.shards import read_manifest
from remit.train import cpu_compat, distributed, processes
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
    save_checkpoint,
    verify_checkpoint,
)
from remit.train.config import TrainConfig
from remit.train.convert import check_hf_checkpoint, save_hf
from remit.train.dataset import RemitDataset
from remit.train.engine import Engine, build_engine
from remit.train.evaluate import EvalPlan, eval_batches, eval_record, plan_eval
from remit.train.guard import MicroBatchLoss, StepGuard, guarded_step
from remit.train.loader import BatchLoader
from remit.train.loss import STAT_NAMES, remit_loss, summarize
from remit.train.metrics import MetricsLog, Progress
from remit.train.model import forward_tokens
from remit.train.parallel import gather_full_model
from remit.train.preflight import (
    PreflightError,
    check_data_fits_model,
    check_resume_matches,
    check_weights_available,
    validate_listing_of,
)
from remit.train.random_init import prepare_template, random_hf_state
from remit.train.sampler import SampleOrder
from remit.train.schedule import SCHEDULE_KEY, check_schedule, resume_scheduler, saved_schedule, schedule_of
from remit.train.sinks import Sink, open_sinks
from remit.train.stopping import StopRule

T = TypeVar("T")

#: Sub-folder of the save folder holding the HF config and tokenizer the run started from.
HF_TEMPLATE = "hf_template"
#: File in the save folder naming the architecture and the attention backend (whose layer spec names
#: the checkpoint's tensors), for export.
MODEL_FILE = "model.json"

#: Called on every rank after each step with (step, this rank's sample ids, the step's metrics).
Observer = Callable[[int, np.ndarray, dict[str, Any]], None]
#: Called on every rank after the backward pass, before the optimizer step, with (step, the engine).
BeforeStep = Callable[[int, Engine], None]


class DataReadError(ValueError):
    """A rank could not read its data for a step (a shard that fails its checksum, a damaged file);
    raised on every rank together, with the failing rank's message."""


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


def _preflight(
    cfg: TrainConfig, template: Path, vocab_size: int, max_positions: int, checkpoint: Path | None
) -> str | None:
    """Check, on rank 0, the save folder, the checkpoint's hashes, and the data and eval outputs (their
    manifests and listings, not their shards); share the verdict, so that every rank fails together.
    Start-up reads no shard: each rank validates the shards it trains on as it first reads them."""
    verdict: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            _check_save_folder(cfg.save)
            if checkpoint is not None:
                verify_checkpoint(checkpoint, trust=cfg.trust_checkpoint)
            verdict[1] = _check_output(cfg.data, "--data", template, vocab_size, max_positions, cfg)
            if cfg.eval_data is not None:
                eval_hash = _check_output(cfg.eval_data, "--eval-data", template, vocab_size, max_positions, cfg)
                if eval_hash != verdict[1]:
                    raise PreflightError(
                        f"{cfg.eval_data / 'manifest.json'}: --eval-data was scored with tokenizer {eval_hash}, "
                        f"--data with {verdict[1]}; evaluate on an output annotated with the same tokenizer."
                    )
        except (ValueError, FileNotFoundError) as e:  # PreflightError, ShardError, UntrustedCheckpointError
            verdict[0] = str(e)
        except OSError as e:  # a read-only or full save folder
            verdict[0] = describe_os_error(e)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise PreflightError(verdict[0])
    return verdict[1]


def _prepare_random_template(init_config: Path, manifest_tokenizer: dict[str, Any], dst: Path) -> None:
    """Rank 0 writes the HF template of a randomly initialised run; a failure stops every rank together
    (the broadcast also keeps the other ranks from reading the template before it is written)."""
    verdict: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            prepare_template(init_config, manifest_tokenizer, dst)
        except (FileNotFoundError, ValueError) as e:
            verdict[0] = str(e)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise PreflightError(verdict[0])


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


def _agreed(read: Callable[[], T], what: str, device: torch.device) -> T:
    """`read()` on every rank, after every rank has said it could: a rank whose data fails (e.g. a shard
    that does not match its checksum, or fails validation) makes every rank stop here with its message,
    at the same step, instead of leaving the others waiting in the step's collectives."""
    failure: str | None = None
    result: Any = None
    try:
        result = read()
    except (ValueError, FileNotFoundError) as e:
        failure = str(e)
    except OSError as e:
        failure = describe_os_error(e)
    except Exception as e:  # a defect: still stop every rank, with its name
        failure = f"{type(e).__name__}: {' '.join(str(e).split())}"
    flag = torch.tensor([0 if failure is None else 1], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag.item()):
        messages: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(messages, failure)
        rank, msg = next((r, m) for r, m in enumerate(messages) if m is not None)
        raise DataReadError(f"{what}: rank {rank} could not read its data: {msg}")
    return result


def _next_batches(loader: BatchLoader, n: int, step: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's `n` micro-batches of `step`, read on every rank together (`_agreed`)."""
    return _agreed(lambda: [next(loader) for _ in range(n)], f"step {step}", device)


def _forward_step(
    mode: str,
    loss_opts: dict[str, Any],
    attention: str,
    seen: list[np.ndarray],
    records: list[MicroBatchLoss],
    data_iterator,
    model,
):
    batch = next(data_iterator)
    sample_ids = batch["sample_id"].cpu().numpy()
    seen.append(sample_ids)
    # On pipeline stages after the first, mcore feeds the previous stage's activations instead of the
    # tokens; on stages before the last it returns activations and never calls loss_func.
    per_token_loss = forward_tokens(model, batch, attention)

    def loss_func(output_tensor: torch.Tensor):
        s, n, report = remit_loss(
            output_tensor,
            batch["loss_mask"],
            mode,
            loss_weight=batch["loss_weight"],
            logp_rl=batch["logp_rl"],
            segment_ids=batch["segment_ids"],
            sample_ids=batch["sample_id"],
            **loss_opts,
        )
        # Small [b, s] tensors, kept for this step so the guard can name the samples behind a NaN.
        records.append(
            MicroBatchLoss(
                sample_ids,
                output_tensor.detach(),
                batch["loss_mask"],
                batch["loss_weight"],
                batch["logp_rl"],
                batch["segment_ids"],
            )
        )
        return s, n, {"remit": report}

    return per_token_loss, loss_func


def train(cfg: TrainConfig, observer: Observer | None = None, before_step: BeforeStep | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; return the last step's metrics and the checkpoint path.

    `observer` sees every finished step; `before_step` (tests, fault injection) runs after the
    backward pass and before the optimizer step, with the model, optimizer and layout."""
    created = distributed.init(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size)
    try:
        run = prepare(cfg)
        try:
            _loop(run, observer, before_step)
        finally:
            run.close()
        return finish(run)
    except BaseException:
        processes.end_children()
        raise
    finally:
        distributed.teardown(created)


def _step_stats(reports: list[dict[str, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """This rank's summed loss report; zeros on pipeline stages without the loss."""
    if reports:
        return torch.stack([r["remit"] for r in reports]).sum(0)
    return torch.zeros(len(STAT_NAMES), dtype=torch.float64, device=device)


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
    load_dir = Path(cfg.load or cfg.save)
    resume_it = latest_iteration(load_dir)
    checkpoint = iteration_dir(load_dir, resume_it) if resume_it is not None else None
    random_init = resume_it is None and cfg.init_config is not None
    template, manifest = _model_source(cfg, load_dir, resume_it)
    arch = read_architecture(template)
    check_parallel(arch, cfg.tensor_model_parallel_size)  # heads, KV groups, FFN and vocabulary: before the data
    attention = resolve_backend(cfg.attention)
    if resume_it is None and not random_init:
        check_hf_checkpoint(template, arch)  # tensor names and shapes, before any data is read
    elif resume_it is not None:
        _check_layout(load_dir, attention)
    if manifest is None:
        manifest = read_manifest(cfg.data)
    check_weights_available(manifest, cfg.weights, cfg.data)  # after the model checks, before the data checks
    tokenizer_hash = _preflight(cfg, template, arch.vocab_size, arch.max_positions, checkpoint)

    # Each rank validates and checksums the shards it reads, as it first reads them (remit.train.dataset).
    dataset = _open_data(cfg.data, tokenizer_hash, cfg)
    order = SampleOrder(dataset.shard_rows, seed=cfg.seed, shuffle_shards=cfg.shuffle_shards)
    eps = cfg.eps if cfg.eps is not None and cfg.weights == "online" else manifest.eps
    center = cfg.center or manifest.center
    keep_ratio = cfg.keep_ratio if cfg.weights == "rho1" else 1.0
    loss_opts: dict[str, Any] = {"eps": eps, "center": center, "seed": cfg.seed, "keep_ratio": keep_ratio}
    dp_size = cfg.data_parallel_size(dist.get_world_size())
    gbs, n_micro = cfg.check_batch(dp_size, len(dataset))  # before the model is built
    objective = {"weights": cfg.weights, "eps": eps, "center": center, "global_batch_size": gbs}
    if cfg.weights == "rho1":
        objective["keep_ratio"] = keep_ratio
    if resume_it is not None:  # what the checkpoint was trained with, before any tensor is loaded
        common = read_common_state(load_dir, resume_it)
        check_resume_matches(dict(common.get("train_state", {})), cfg.data, cfg.seed, objective)
        check_schedule(
            saved_schedule(dict(common.get("train_state", {})), dict(common["scheduler"])), cfg, str(checkpoint)
        )

    cpu_compat.seed_rng(cfg.seed)
    init_state = random_hf_state(template, arch, cfg.seed) if random_init else None
    init_hf = template if resume_it is None and not random_init else None
    engine = build_engine(cfg, arch, attention, dataset.seq_len, init_hf, init_state=init_state)
    layout = engine.layout
    iteration, consumed, tokens = 0, 0, 0
    layout_of_optimizer = optimizer_layout(cfg.use_distributed_optimizer, layout.tp_size, layout.pp_size)
    if resume_it is not None:
        check_optimizer_layout(load_dir, layout_of_optimizer)
        state, scheduler_state = load_checkpoint(load_dir, engine.model, engine.optimizer)
        resume_scheduler(engine.scheduler, scheduler_state, int(state["iteration"]), override=cfg.override_schedule)
        iteration, consumed, tokens = int(state["iteration"]), int(state["consumed_samples"]), int(state["tokens"])
    if rank == 0:
        _write_run_files(cfg, template, attention, arch)
        _announce(cfg, arch, attention, len(dataset), dataset.seq_len, layout, gbs, n_micro, iteration, template)

    eval_set = eval_plan = None
    if cfg.eval_data is not None:
        eval_set = _open_data(cfg.eval_data, tokenizer_hash, cfg, seq_len=dataset.seq_len)
        eval_plan = plan_eval(
            len(eval_set),
            global_batch=gbs,
            micro_batch=cfg.micro_batch_size,
            dp_rank=layout.dp_rank,
            dp_size=layout.dp_size,
            eval_iters=cfg.eval_iters,
        )
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
        cfg.weights, eps, center, resume_hint, rank=rank, dp_rank=layout.dp_rank, seed=cfg.seed, keep_ratio=keep_ratio
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
        iteration=iteration,
        consumed=consumed,
        tokens=tokens,
        last_checkpoint=guard_hint,
    )


def _open_data(root: Path, tokenizer_hash: str | None, cfg: TrainConfig, seq_len: int | None = None) -> RemitDataset:
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


# --- one step --------------------------------------------------------------------------------------


def _reduce_stats(run: Run, reports: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's summed report, the report summed over data-parallel ranks and shared by every stage)."""
    from megatron.core import parallel_state

    local = _step_stats(reports, run.device)
    stats = local.clone()
    dist.all_reduce(stats, group=parallel_state.get_data_parallel_group())
    if run.engine.layout.pp_size > 1:  # only the last stage computed the loss
        dist.broadcast(
            stats,
            src=parallel_state.get_pipeline_model_parallel_last_rank(),
            group=parallel_state.get_pipeline_model_parallel_group(),
        )
    return local, stats.cpu()


def train_step(
    run: Run, step: int, observer: Observer | None = None, before_step: BeforeStep | None = None
) -> dict[str, Any]:
    """One optimizer step: its micro-batches forward and backward, the guard, the update; its record."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    cfg, engine = run.cfg, run.engine
    t0 = time.perf_counter()
    engine.model.zero_grad_buffer()
    engine.optimizer.zero_grad()
    engine.scheduler.step(1)  # the LR of this step (remit.train.schedule)
    lr = float(engine.optimizer.param_groups[0]["lr"])
    seen: list[np.ndarray] = []
    records: list[MicroBatchLoss] = []
    batches = _next_batches(run.loader, run.n_micro, step, run.device)
    reports = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, cfg.weights, run.loss_opts, run.attention, seen, records),
        data_iterator=iter(batches),
        model=[engine.model],
        num_microbatches=run.n_micro,
        seq_length=run.seq_len,
        micro_batch_size=cfg.micro_batch_size,
        forward_only=False,
    )
    local_stats, stats = _reduce_stats(run, reports)
    run.guard.check_loss(step, stats, local_stats, seen, records)
    summary = summarize(stats)
    if before_step is not None:
        before_step(step, engine)
    grad_norm = guarded_step(
        engine.optimizer, partial(run.guard.check_grad_norm, step, loss=summary["loss"], seen=seen)
    )
    run.consumed += run.gbs
    run.tokens += int(summary.pop("valid_tokens"))
    elapsed = time.perf_counter() - t0
    record = {
        "step": step,
        **summary,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": run.tokens,
        "consumed_samples": run.consumed,
        "step_time_s": elapsed,
        "tokens_per_s": run.gbs * run.seq_len / elapsed,
    }
    if observer is not None:
        observer(step, np.concatenate(seen), record)
    return record


def evaluate(run: Run, step: int) -> dict[str, Any]:
    """The held-out loss of the current model over the eval plan (see remit.train.evaluate); {} with a
    note when the eval output holds no scored token."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    assert run.eval_set is not None and run.eval_plan is not None
    eval_set, plan = run.eval_set, run.eval_plan
    batches = _agreed(lambda: eval_batches(eval_set, plan, run.device), f"evaluation after step {step}", run.device)
    run.engine.model.eval()
    try:
        with torch.no_grad():
            reports = get_forward_backward_func()(
                forward_step_func=partial(_forward_step, run.cfg.weights, run.loss_opts, run.attention, [], []),
                data_iterator=iter(batches),
                model=[run.engine.model],
                num_microbatches=plan.num_microbatches,
                seq_length=run.seq_len,
                micro_batch_size=run.cfg.micro_batch_size,
                forward_only=True,
            )
    finally:
        run.engine.model.train()
    _, stats = _reduce_stats(run, reports)
    summary = summarize(stats)
    if summary["valid_tokens"] == 0:
        if run.is_main:
            print(f"eval after step {step}: {run.cfg.eval_data} holds no scored token; no eval loss", flush=True)
        return {}
    return eval_record(summary)


# --- saving and the loop ---------------------------------------------------------------------------


def save(run: Run, step: int) -> None:
    """A checkpoint of `step` on every rank: written now, or handed to the background writer
    (--async-save), whose completed saves `_poll_saves` picks up."""
    cfg = run.cfg
    state = {
        "consumed_samples": run.consumed,
        "tokens": run.tokens,
        "seed": cfg.seed,
        "data_run_id": run.manifest.run_id,
        "bf16": cfg.bf16,
        "optimizer_layout": run.optimizer_layout,
        SCHEDULE_KEY: schedule_of(cfg),
        **run.objective,
    }
    engine = run.engine
    if run.saver is not None:
        run.saver.save(step, engine.model, engine.optimizer, engine.scheduler, state)
        return
    saved = save_checkpoint(
        cfg.save, step, engine.model, engine.optimizer, engine.scheduler, state, keep_last=cfg.keep_last
    )
    run.saved = run.last_checkpoint[0] = saved


def _poll_saves(run: Run, wait: bool = False) -> None:
    """Complete the background saves every rank has finished (all of them with `wait`)."""
    if run.saver is None:
        return
    run.saver.wait() if wait else run.saver.poll()
    if run.saver.completed:
        run.saved = run.last_checkpoint[0] = run.saver.completed[-1]


def _loop(run: Run, observer: Observer | None, before_step: BeforeStep | None) -> None:
    try:
        _steps(run, observer, before_step)
    finally:
        if sys.exc_info()[0] is None:
            _poll_saves(run, wait=True)  # never leave with a save in flight


def _steps(run: Run, observer: Observer | None, before_step: BeforeStep | None) -> None:
    cfg = run.cfg
    for step in range(run.iteration + 1, cfg.train_iters + 1):
        processes.raise_if_interrupted()  # a Ctrl-C that Python swallowed during the last save
        record = train_step(run, step, observer, before_step)
        last = step == cfg.train_iters
        stopping = not last and run.stop.should_stop()
        if run.eval_plan is not None and (last or stopping or (cfg.eval_interval and step % cfg.eval_interval == 0)):
            record.update(evaluate(run, step))
        run.log.write(record)
        for sink in run.sinks:
            sink.write(record)
        run.progress.step(record)
        run.record = record
        if last or stopping or (cfg.save_interval and step % cfg.save_interval == 0):
            save(run, step)
        _poll_saves(run)
        if stopping:
            run.stopped = run.stop.reason
            if run.is_main:
                print(
                    f"remit-train: {run.stop.reason}: saved step {step} and stopped; run the same command to resume",
                    flush=True,
                )
            return


def finish(run: Run) -> dict[str, Any]:
    """Export the model (with --export-hf, unless the run stopped early), print the summary."""
    cfg, layout = run.cfg, run.engine.layout
    if cfg.export_hf is not None and run.stopped is None:
        full = gather_full_model(run.engine.model, layout, run.arch.tie_embeddings) if layout.dp_rank == 0 else None
        if run.is_main and full is not None:
            save_hf(full, cfg.save / HF_TEMPLATE, cfg.export_hf)
            print(f"exported the model as a Hugging Face checkpoint: {cfg.export_hf}", flush=True)
        dist.barrier()
    run.progress.summary(run.record, run.saved)
    return {"last": run.record, "checkpoint": str(run.saved) if run.saved else None, "stopped": run.stopped}
