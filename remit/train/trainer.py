"""The mid-training loop on Megatron-Core: GPTModel, mcore DDP, Megatron's optimizer and schedule.

One optimizer step = ``global_batch / (micro_batch * DP)`` micro-batches through
`get_forward_backward_func`. The loss function returns (sum of w*l, valid-token count, report) and
``calculate_per_token_loss=True`` makes Megatron divide the gradient once by the global valid-token
count, so the objective is the paper's: sum over the global batch of w*l over the number of tokens.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from remit.shards import ShardError, read_manifest
from remit.train import cpu_compat, distributed
from remit.train.checkpoint import latest_iteration, load_checkpoint, save_checkpoint
from remit.train.config import TrainConfig
from remit.train.convert import gather_full_state, load_hf_into, load_hf_state_into, save_hf
from remit.train.dataset import RemitDataset
from remit.train.loader import BatchLoader
from remit.train.loss import remit_loss, summarize
from remit.train.metrics import MetricsLog, Progress
from remit.train.model import TEMPLATE_FILES, build_gpt_model, llama_shape, read_hf_config, transformer_config
from remit.train.preflight import (
    PreflightError,
    check_data_fits_model,
    check_resume_matches,
    check_weights_available,
    validate_data,
)
from remit.train.random_init import prepare_template, random_hf_state
from remit.train.sampler import SampleOrder

#: Sub-folder of the save folder holding the HF config and tokenizer the run started from.
HF_TEMPLATE = "hf_template"

#: Called on every rank after each step with (step, this rank's sample ids, the step's metrics).
Observer = Callable[[int, np.ndarray, dict[str, Any]], None]


def _preflight(cfg: TrainConfig, template: Path, vocab_size: int) -> str | None:
    """Validate the data on rank 0 and share the verdict, so that every rank fails together."""
    verdict: list[Any] = [None, None]
    if dist.get_rank() == 0:
        try:
            if not cfg.skip_validate:
                validate_data(cfg.data)
            verdict[1] = check_data_fits_model(cfg.data, vocab_size, template)
        except (PreflightError, ShardError, FileNotFoundError) as e:
            verdict[0] = str(e)
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0]:
        raise PreflightError(verdict[0])
    return verdict[1]


def _prepare_random_template(cfg: TrainConfig, manifest_tokenizer: dict[str, Any], dst: Path) -> None:
    """Rank 0 writes the HF template of a randomly initialised run; a failure stops every rank together."""
    verdict: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            prepare_template(cfg.init_config, manifest_tokenizer, dst)
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


def _forward_step(mode: str, opts: dict[str, Any], seen: list[np.ndarray], data_iterator, model):
    batch = next(data_iterator)
    seen.append(batch["sample_id"].cpu().numpy())
    per_token_loss = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])

    def loss_func(output_tensor: torch.Tensor):
        s, n, report = remit_loss(
            output_tensor,
            batch["loss_mask"],
            mode,
            loss_weight=batch["loss_weight"],
            logp_rl=batch["logp_rl"],
            segment_ids=batch["segment_ids"],
            sample_ids=batch["sample_id"],
            **opts,
        )
        return s, n, {"remit": report}

    return per_token_loss, loss_func


def train(cfg: TrainConfig, observer: Observer | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; return the last step's metrics and the checkpoint path."""
    created = distributed.init(cfg.tensor_model_parallel_size)
    try:
        return _train(cfg, observer)
    finally:
        distributed.teardown(created)


def _train(cfg: TrainConfig, observer: Observer | None) -> dict[str, Any]:
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    rank = dist.get_rank()
    is_main = rank == 0
    dp_size, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    tp_size, tp_rank = cfg.tensor_model_parallel_size, parallel_state.get_tensor_model_parallel_rank()
    gbs, n_micro = cfg.batch_layout(dp_size)
    device = cpu_compat.device()

    load_dir = cfg.load or cfg.save
    resume_it = latest_iteration(load_dir)
    manifest = read_manifest(cfg.data)
    check_weights_available(manifest, cfg.weights, cfg.data)
    random_init = resume_it is None and cfg.init_config is not None
    if resume_it is not None:
        template = Path(load_dir) / HF_TEMPLATE
    elif random_init:
        template = cfg.save / HF_TEMPLATE
        _prepare_random_template(cfg, manifest.data.get("tokenizer", {}), template)
    else:
        template = cfg.init_hf
    if template is None:
        raise PreflightError(f"{load_dir}: no checkpoint to resume and no --init-hf; pass --init-hf DIR.")
    shape = llama_shape(read_hf_config(template), str(template / "config.json"))
    tokenizer_hash = _preflight(cfg, template, shape.vocab_size)

    dataset = RemitDataset(
        cfg.data, tokenizer_hash=tokenizer_hash, cache_shards=cfg.shuffle_shards, create_attention_mask=False
    )
    seq_len = dataset.seq_len
    order = SampleOrder(dataset.shard_rows, seed=cfg.seed, shuffle_shards=cfg.shuffle_shards)
    eps = cfg.eps if cfg.eps is not None and cfg.weights == "online" else manifest.eps
    center = cfg.center or manifest.center
    keep_ratio = cfg.keep_ratio if cfg.weights == "rho1" else 1.0
    objective = {"weights": cfg.weights, "eps": eps, "center": center, "global_batch_size": gbs}
    if cfg.weights == "rho1":
        objective["keep_ratio"] = keep_ratio
    loss_opts = {"eps": eps, "center": center, "seed": cfg.seed, "keep_ratio": keep_ratio}

    cpu_compat.seed_rng(cfg.seed)
    tcfg = transformer_config(shape, tp=tp_size, bf16=cfg.bf16)
    model = build_gpt_model(shape, tcfg, max_sequence_length=seq_len).to(device)
    if random_init:
        hf_state = random_hf_state(read_hf_config(template), cfg.seed)
        load_hf_state_into(model, hf_state, shape, tp_rank, tp_size, source=f"--init-config {cfg.init_config}")
    elif resume_it is None:
        load_hf_into(model, template, shape, tp_rank, tp_size)
    ddp = DistributedDataParallel(tcfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    tcfg.finalize_model_grads_func = finalize_model_grads
    tcfg.no_sync_func = ddp.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_eps=cfg.adam_eps,
            clip_grad=cfg.clip_grad,
            bf16=cfg.bf16,
            params_dtype=tcfg.params_dtype,
        ),
        [ddp],
    )
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_iters,
        lr_decay_steps=cfg.decay_iters,
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=cfg.train_iters,
        wd_incr_style="constant",
    )

    iteration, consumed, tokens = 0, 0, 0
    if resume_it is not None:
        state = load_checkpoint(load_dir, ddp, optimizer, scheduler)
        check_resume_matches(state, cfg.data, cfg.seed, objective)
        iteration, consumed, tokens = int(state["iteration"]), int(state["consumed_samples"]), int(state["tokens"])
    if is_main:
        cfg.save.mkdir(parents=True, exist_ok=True)
        _copy_template(template, cfg.save / HF_TEMPLATE)
        print(
            f"remit-train: {cfg.weights} weights, {len(dataset)} samples of {seq_len} tokens, "
            f"DP {dp_size} x TP {tp_size}, global batch {gbs} ({n_micro} micro-batches of {cfg.micro_batch_size}"
            f" per rank), "
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
        dp_rank=dp_rank,
        dp_size=dp_size,
        consumed_samples=consumed,
        device=device,
    )
    log = MetricsLog(cfg.save, resume_iteration=iteration, enabled=is_main)
    progress = Progress(cfg.train_iters, iteration, cfg.log_interval, enabled=is_main)
    forward_backward = get_forward_backward_func()
    dp_group = parallel_state.get_data_parallel_group()
    record: dict[str, Any] | None = None
    saved: Path | None = None
    try:
        for step in range(iteration + 1, cfg.train_iters + 1):
            t0 = time.perf_counter()
            ddp.zero_grad_buffer()
            optimizer.zero_grad()
            scheduler.step(1)  # the LR of this step: warm-up reaches `lr` at step lr_warmup_iters
            lr = float(optimizer.param_groups[0]["lr"])
            seen: list[np.ndarray] = []
            reports = forward_backward(
                forward_step_func=partial(_forward_step, cfg.weights, loss_opts, seen),
                data_iterator=loader,
                model=[ddp],
                num_microbatches=n_micro,
                seq_length=seq_len,
                micro_batch_size=cfg.micro_batch_size,
                forward_only=False,
            )
            _, grad_norm, _ = optimizer.step()
            stats = torch.stack([r["remit"] for r in reports]).sum(0)
            dist.all_reduce(stats, group=dp_group)
            consumed += gbs
            summary = summarize(stats.cpu())
            tokens += summary.pop("valid_tokens")
            elapsed = time.perf_counter() - t0
            record = {
                "step": step,
                **summary,
                "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
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
                        **objective,
                    },
                )
    finally:
        loader.close()
        log.close()
    if cfg.export_hf is not None:
        full = gather_full_state(ddp.module, parallel_state.get_tensor_model_parallel_group())
        if is_main:
            save_hf(full, cfg.save / HF_TEMPLATE, cfg.export_hf)
            print(f"exported the model as a Hugging Face checkpoint: {cfg.export_hf}", flush=True)
        dist.barrier()
    progress.summary(record, saved)
    return {"last": record, "checkpoint": str(saved) if saved else None}
