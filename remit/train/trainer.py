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

import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from remit.common.errors import describe_os_error
from remit.train import distributed, processes
from remit.train.checkpoint import (
    save_checkpoint,
)
from remit.train.config import TrainConfig
from remit.train.convert import save_hf
from remit.train.engine import Engine
from remit.train.evaluate import eval_batches, eval_record
from remit.train.flops import doc_lengths_from_segments, step_flops
from remit.train.folders import (
    claim_export_folder,
)
from remit.train.guard import MicroBatchLoss, guarded_step
from remit.train.loader import BatchLoader
from remit.train.loss import STAT_NAMES, remit_loss, summarize
from remit.train.model import forward_tokens
from remit.train.parallel import gather_full_model
from remit.train.schedule import SCHEDULE_KEY, schedule_of
from remit.train.startup import HF_TEMPLATE, Run, prepare

Observer = Callable[[int, np.ndarray, dict[str, Any]], None]
#: Called on every rank after the backward pass, before the optimizer step, with (step, the engine).
BeforeStep = Callable[[int, Engine], None]
T = TypeVar("T")


class DataReadError(ValueError):
    """A rank could not read its data for a step (a shard that fails its checksum, a damaged file);
    raised on every rank together, with the failing rank's message."""


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
            return finish(run)
        finally:
            run.close()
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
    step_flops_ = _step_flops(run, batches)
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
        **_throughput(run, step_flops_, elapsed),
    }
    if observer is not None:
        observer(step, np.concatenate(seen), record)
    return record


def _step_flops(run: Run, batches: list[dict[str, torch.Tensor]]) -> float:
    """Model FLOPs of the whole step (every data-parallel rank's micro-batches; causal attention counted per
    document, see remit.train.flops)."""
    from megatron.core import parallel_state

    mine = sum(step_flops(run.arch, doc_lengths_from_segments(b["segment_ids"])) for b in batches)
    total = torch.tensor([mine], dtype=torch.float64, device=run.device)
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return float(total.item())


def _throughput(run: Run, flops: float, seconds: float) -> dict[str, float]:
    """Achieved model TFLOP/s per device, and MFU where the device's peak is known."""
    per_device = flops / seconds / dist.get_world_size() / 1e12
    out = {"tflops": per_device}
    if run.peak_tflops is not None:
        out["mfu"] = per_device / run.peak_tflops
    return out


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
    _steps(run, observer, before_step)
    # Never leave with a save in flight. (A run that fails ends its background writer instead: the
    # tracker then still names the last complete checkpoint.)
    _poll_saves(run, wait=True)


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
            claim_export_folder(cfg.export_hf)
            save_hf(full, cfg.save / HF_TEMPLATE, cfg.export_hf)
            print(f"exported the model as a Hugging Face checkpoint: {cfg.export_hf}", flush=True)
        dist.barrier()
    run.progress.summary(run.record, run.saved)
    return {"last": run.record, "checkpoint": str(run.saved) if run.saved else None, "stopped": run.stopped}
