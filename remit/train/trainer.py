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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from remit.common.atomic import write_json_atomic
from remit.common.errors import describe_os_error
from remit.shards import read_manifest
from remit.train import cpu_compat, distributed, processes
from remit.train.architecture import TEMPLATE_FILES, check_parallel, read_architecture
from remit.train.attention import resolve_backend
from remit.train.checkpoint import (
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
    validate_data,
)
from remit.train.random_init import prepare_template, random_hf_state
from remit.train.sampler import SampleOrder
from remit.train.schedule import SCHEDULE_KEY, check_schedule, resume_scheduler, saved_schedule, schedule_of

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


def _preflight(
    cfg: TrainConfig, template: Path, vocab_size: int, max_positions: int, checkpoint: Path | None
) -> str | None:
    """Check, on rank 0 only, the save folder, the checkpoint's hashes, the sequence length against the
    model, then validate the data (and read every shard's footer); share the verdict, so that every
    rank fails together. The other ranks read only the shards that hold their samples."""
    verdict: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            _check_save_folder(cfg.save)
            if checkpoint is not None:
                verify_checkpoint(checkpoint, trust=cfg.trust_checkpoint)
            seq_len = read_manifest(cfg.data).seq_len
            if seq_len > max_positions:
                raise PreflightError(
                    f"{cfg.data / 'manifest.json'}: rows of seq_len {seq_len} tokens, but the model ({template}) "
                    f"has {max_positions} positions (max_position_embeddings); annotate with --seq-len of at "
                    f"most {max_positions}, or train a model with more positions."
                )
            if not cfg.skip_validate:
                validate_data(cfg.data)
            RemitDataset(cfg.data, check_footers=True)  # every shard's footer, here only
            verdict[1] = check_data_fits_model(cfg.data, vocab_size, template)
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


def _next_batches(loader: BatchLoader, n: int, step: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """This rank's `n` micro-batches of `step`, after every rank has said it could read its own: a rank
    whose data fails (e.g. a shard that does not match its checksum) makes every rank stop here with
    its message, instead of leaving the others waiting in the step's collectives."""
    batches: list[dict[str, torch.Tensor]] = []
    failure: str | None = None
    try:
        for _ in range(n):
            batches.append(next(loader))
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
        raise DataReadError(f"step {step}: rank {rank} could not read its data: {msg}")
    return batches


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
        return _train(cfg, observer, before_step)
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


def _train(cfg: TrainConfig, observer: Observer | None, before_step: BeforeStep | None) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    rank = dist.get_rank()
    is_main = rank == 0
    device = cpu_compat.device()

    processes.no_orphans()
    processes.catch_interrupts()
    load_dir = cfg.load or cfg.save
    resume_it = latest_iteration(load_dir)
    checkpoint = iteration_dir(load_dir, resume_it) if resume_it is not None else None
    random_init = resume_it is None and cfg.init_config is not None
    manifest = None
    if resume_it is not None:
        template = Path(load_dir) / HF_TEMPLATE
    elif cfg.init_config is not None:
        manifest = read_manifest(cfg.data)  # the tokenizer the shards record is the random model's
        template = cfg.save / HF_TEMPLATE
        _prepare_random_template(cfg.init_config, manifest.data.get("tokenizer", {}), template)
    elif cfg.init_hf is not None:
        template = cfg.init_hf
    else:
        raise PreflightError(f"{load_dir}: no checkpoint to resume and no --init-hf; pass --init-hf DIR.")
    arch = read_architecture(template)
    check_parallel(arch, cfg.tensor_model_parallel_size)  # heads, KV groups, FFN and vocabulary: before the data
    attention = resolve_backend(cfg.attention)
    if resume_it is None and not random_init:
        check_hf_checkpoint(template, arch)  # tensor names and shapes, before any data is read
    elif resume_it is not None:
        _check_layout(Path(load_dir), attention)
    if manifest is None:
        manifest = read_manifest(cfg.data)
    check_weights_available(manifest, cfg.weights, cfg.data)  # after the model checks, before the data checks
    tokenizer_hash = _preflight(cfg, template, arch.vocab_size, arch.max_positions, checkpoint)

    # Rank 0 checked every shard's footer in the preflight; the other ranks check each shard they read.
    dataset = RemitDataset(
        cfg.data,
        tokenizer_hash=tokenizer_hash,
        cache_shards=cfg.shuffle_shards,
        create_attention_mask=False,
        check_footers=False,
    )
    seq_len = dataset.seq_len
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
    common: dict[str, Any] = {}
    if resume_it is not None:  # what the checkpoint was trained with, before any tensor is loaded
        common = read_common_state(load_dir, resume_it)
        check_resume_matches(dict(common.get("train_state", {})), cfg.data, cfg.seed, objective)
        check_schedule(
            saved_schedule(dict(common.get("train_state", {})), dict(common["scheduler"])), cfg, str(checkpoint)
        )

    cpu_compat.seed_rng(cfg.seed)
    init_state = random_hf_state(template, arch, cfg.seed) if random_init else None
    init_hf = template if resume_it is None and not random_init else None
    engine = build_engine(cfg, arch, attention, seq_len, init_hf, init_state=init_state)
    layout, ddp, optimizer, scheduler = engine.layout, engine.model, engine.optimizer, engine.scheduler

    iteration, consumed, tokens = 0, 0, 0
    layout_of_optimizer = optimizer_layout(cfg.use_distributed_optimizer, layout.tp_size, layout.pp_size)
    if resume_it is not None:
        check_optimizer_layout(load_dir, layout_of_optimizer)
        state, scheduler_state = load_checkpoint(load_dir, ddp, optimizer)
        resume_scheduler(scheduler, scheduler_state, int(state["iteration"]), override=cfg.override_schedule)
        iteration, consumed, tokens = int(state["iteration"]), int(state["consumed_samples"]), int(state["tokens"])
    if is_main:
        cfg.save.mkdir(parents=True, exist_ok=True)
        _copy_template(template, cfg.save / HF_TEMPLATE)
        model_info = {"attention": attention, "architecture": arch.to_dict()}
        write_json_atomic(cfg.save / MODEL_FILE, model_info)
        print(
            f"remit-train: {arch.model_type}, {attention} attention, {cfg.weights} weights, {len(dataset)} samples "
            f"of {seq_len} tokens, DP {layout.dp_size} x TP {layout.tp_size} x PP {layout.pp_size}, "
            f"{'bf16' if cfg.bf16 else 'fp32'}, global batch {gbs} ({n_micro} micro-batches of "
            f"{cfg.micro_batch_size} per rank), "
            + (
                f"resuming at step {iteration}"
                if iteration
                else (f"random init from {cfg.init_config} (seed {cfg.seed})" if random_init else f"from {template}")
            ),
            flush=True,
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
    )
    log = MetricsLog(cfg.save, resume_iteration=iteration, enabled=is_main)
    progress = Progress(cfg.train_iters, iteration, cfg.log_interval, enabled=is_main)
    forward_backward = get_forward_backward_func()
    dp_group = parallel_state.get_data_parallel_group()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last_stage_rank = parallel_state.get_pipeline_model_parallel_last_rank()
    record: dict[str, Any] | None = None
    saved: Path | None = None
    last_checkpoint = [iteration_dir(load_dir, resume_it) if resume_it is not None else None]

    def resume_hint() -> str:
        if last_checkpoint[0] is None:
            return f"No checkpoint was saved yet in {cfg.save}: fix the cause and start again."
        return (
            f"The last checkpoint, {last_checkpoint[0]}, is intact: fix the cause (for bad data, "
            "`remit-annotate validate` lists it) and resume from it."
        )

    guard = StepGuard(
        cfg.weights, eps, center, resume_hint, rank=rank, dp_rank=layout.dp_rank, seed=cfg.seed, keep_ratio=keep_ratio
    )
    try:
        for step in range(iteration + 1, cfg.train_iters + 1):
            processes.raise_if_interrupted()  # a Ctrl-C that Python swallowed during the last save
            t0 = time.perf_counter()
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            scheduler.step(1)  # the LR of this step (remit.train.schedule)
            lr = float(optimizer.param_groups[0]["lr"])
            seen: list[np.ndarray] = []
            records: list[MicroBatchLoss] = []
            batches = _next_batches(loader, n_micro, step, device)
            reports = forward_backward(
                forward_step_func=partial(_forward_step, cfg.weights, loss_opts, attention, seen, records),
                data_iterator=iter(batches),
                model=[ddp],
                num_microbatches=n_micro,
                seq_length=seq_len,
                micro_batch_size=cfg.micro_batch_size,
                forward_only=False,
            )
            local_stats = _step_stats(reports, device)
            stats = local_stats.clone()
            dist.all_reduce(stats, group=dp_group)
            if layout.pp_size > 1:  # only the last stage computed the loss
                dist.broadcast(stats, src=last_stage_rank, group=pp_group)
            stats = stats.cpu()
            guard.check_loss(step, stats, local_stats, seen, records)
            summary = summarize(stats)
            if before_step is not None:
                before_step(step, engine)
            grad_norm = guarded_step(optimizer, partial(guard.check_grad_norm, step, loss=summary["loss"], seen=seen))
            consumed += gbs
            tokens += int(summary.pop("valid_tokens"))
            elapsed = time.perf_counter() - t0
            record = {
                "step": step,
                **summary,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "consumed_samples": consumed,
                "step_time_s": elapsed,
                "tokens_per_s": gbs * seq_len / elapsed,
            }
            log.write(record)
            progress.step(record)
            if observer is not None:
                observer(step, np.concatenate(seen), record)
            if step == cfg.train_iters or (cfg.save_interval and step % cfg.save_interval == 0):
                saved = save_checkpoint(
                    cfg.save,
                    step,
                    ddp,
                    optimizer,
                    scheduler,
                    {
                        "consumed_samples": consumed,
                        "tokens": tokens,
                        "seed": cfg.seed,
                        "data_run_id": manifest.run_id,
                        "bf16": cfg.bf16,
                        "optimizer_layout": layout_of_optimizer,
                        SCHEDULE_KEY: schedule_of(cfg),
                        **objective,
                    },
                )
                last_checkpoint[0] = saved
    finally:
        loader.close()
        log.close()
    if cfg.export_hf is not None:
        full = gather_full_model(ddp, layout, arch.tie_embeddings) if layout.dp_rank == 0 else None
        if is_main and full is not None:
            save_hf(full, cfg.save / HF_TEMPLATE, cfg.export_hf)
            print(f"exported the model as a Hugging Face checkpoint: {cfg.export_hf}", flush=True)
        dist.barrier()
    progress.summary(record, saved)
    return {"last": record, "checkpoint": str(saved) if saved else None}
