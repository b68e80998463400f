"""The learning-rate schedule of a run: which LR each step trains at, and what a resume may change.

Convention (the LR of step k, k = 1 .. train_iters; W = --lr-warmup-iters, D = the decay length,
--lr-decay-iters or else --train-iters):

- warm-up, k <= W: ``lr * k / W`` (step 1 already trains, step W at the peak);
- decay, W < k: the cosine or linear curve from ``lr`` at W to ``min_lr`` at D + 1, i.e. with the
  decay ratio ``(k - W) / (D + 1 - W)``; steps after D train at ``min_lr``.

So the last step of the decay (and of a run with the default decay length) still trains above
``min_lr``: no step is spent at LR 0 unless --min-lr 0 is reached by design (steps after an explicit,
shorter --lr-decay-iters). A run of one step trains at the middle of its decay (lr/2 when min_lr is 0).
Megatron-Core's `OptimizerParamScheduler` computes this when its decay length is D + 1 and it is stepped
once before each step.

A checkpoint records the schedule it was trained with (`SCHEDULE_KEY` in its train state). A resume
with another schedule is refused, naming the flag, the checkpoint's value and the new one, unless
--override-schedule is passed: then the run continues from the checkpoint's step under the new
schedule (the LR of step k is the new schedule's at k; the optimizer state is kept).
"""

from __future__ import annotations

from typing import Any

from remit.train.config import TrainConfig

#: Key of the schedule in a checkpoint's train state.
SCHEDULE_KEY = "schedule"
#: Schedule setting -> the flag that sets it.
FLAGS = {
    "lr": "--lr",
    "min_lr": "--min-lr",
    "lr_warmup_iters": "--lr-warmup-iters",
    "lr_decay_iters": "--lr-decay-iters",
    "lr_decay_style": "--lr-decay-style",
    "weight_decay": "--weight-decay",
}


class ScheduleChangedError(ValueError):
    """A resume asked for another schedule than the checkpoint's, without --override-schedule."""


def schedule_of(cfg: TrainConfig) -> dict[str, Any]:
    """The schedule settings of `cfg`, with the decay length resolved (what a checkpoint records)."""
    return {
        "lr": float(cfg.lr),
        "min_lr": float(cfg.min_lr),
        "lr_warmup_iters": int(cfg.lr_warmup_iters),
        "lr_decay_iters": int(cfg.decay_iters),
        "lr_decay_style": cfg.lr_decay_style,
        "weight_decay": float(cfg.weight_decay),
    }


def build_scheduler(optimizer, cfg: TrainConfig):
    """Megatron-Core's scheduler for `cfg` under the convention above (not yet stepped)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.lr_warmup_iters,
        lr_decay_steps=cfg.decay_iters + 1,  # min_lr is reached one step after the decay's last step
        lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=cfg.train_iters,
        wd_incr_style="constant",
    )


def saved_schedule(train_state: dict[str, Any], scheduler_state: dict[str, Any]) -> dict[str, Any]:
    """The schedule a checkpoint was trained with: its record, or (checkpoints written before the
    record) what its scheduler state says, whose decay length then was D itself."""
    recorded = train_state.get(SCHEDULE_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    return {
        "lr": float(scheduler_state["max_lr"]),
        "min_lr": float(scheduler_state["min_lr"]),
        "lr_warmup_iters": int(scheduler_state["lr_warmup_steps"]),
        "lr_decay_iters": int(scheduler_state["lr_decay_steps"]),
        "lr_decay_style": scheduler_state["lr_decay_style"],
        "weight_decay": float(scheduler_state.get("start_wd", 0.0)),
    }


def schedule_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """One phrase per setting that differs: the flag, the checkpoint's value and this run's."""
    new = schedule_of(cfg)
    out = []
    for key, flag in FLAGS.items():
        if key not in saved or saved[key] == new[key]:
            continue
        if key == "lr_decay_iters" and cfg.lr_decay_iters is None:
            out.append(
                f"--train-iters {cfg.train_iters} sets the decay length (no --lr-decay-iters), and the checkpoint "
                f"decays over {saved[key]} iterations"
            )
        else:
            out.append(f"{flag} {new[key]} differs from the checkpoint's {saved[key]}")
    return out


def check_schedule(saved: dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """Refuse a resume whose schedule differs from the checkpoint's (unless cfg.override_schedule)."""
    changes = schedule_changes(saved, cfg)
    if changes and not cfg.override_schedule:
        keep = f"--lr-decay-iters {saved['lr_decay_iters']}" if "lr_decay_iters" in saved else "the same flags"
        raise ScheduleChangedError(
            f"{where}: the learning-rate schedule differs from the checkpoint's: {'; '.join(changes)}. Resume "
            f"with the checkpoint's values (to train longer on the same curve, keep {keep}), or pass "
            "--override-schedule to continue from the checkpoint's step under the new schedule."
        )


def resume_scheduler(scheduler, scheduler_state: dict[str, Any], iteration: int, override: bool) -> None:
    """Put `scheduler` (built from this run's flags) at `iteration`: with the checkpoint's state, or with
    this run's schedule when `override`."""
    if override:
        scheduler.step(iteration)
        return
    scheduler.load_state_dict(scheduler_state)


__all__ = [
    "FLAGS",
    "SCHEDULE_KEY",
    "ScheduleChangedError",
    "build_scheduler",
    "check_schedule",
    "resume_scheduler",
    "saved_schedule",
    "schedule_changes",
    "schedule_of",
]
