"""Where a run's metrics go besides metrics.jsonl: TensorBoard and Weights & Biases (rank 0 only).

- Every numeric field of a metrics.jsonl record becomes a scalar of the same name (`loss`,
  `loss_unweighted`, `mean_weight`, `lr`, `eval_loss`, ...) at the record's step, so the three views of a
  run agree by construction.
- TensorBoard needs the `tensorboard` package; W&B the `wandb` package (`pip install 'remit[wandb]'`),
  and honours its own settings (WANDB_MODE=offline writes locally, to be synced later).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

from remit.common.requires import require


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric fields but the step (bools and None are left out)."""
    return {
        k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoardSink:
    def __init__(self, log_dir: Path) -> None:
        with require("tensorboard", "--tensorboard-dir"):
            from torch.utils.tensorboard import SummaryWriter
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self._writer.add_scalar(name, value, global_step=int(record["step"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    def __init__(self, project: str, run_dir: Path, config: dict[str, Any]) -> None:
        with require("wandb", "--wandb-project"):
            import wandb
        # One W&B run per run folder: a resumed run continues the same W&B run.
        run_id = "remit-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self._run = wandb.init(project=project, dir=str(run_dir), config=config, id=run_id, resume="allow")

    def write(self, record: dict[str, Any]) -> None:
        self._run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()


def open_sinks(
    tensorboard_dir: Path | None, wandb_project: str | None, run_dir: Path, config: dict[str, Any]
) -> list[Sink]:
    sinks: list[Sink] = []
    if tensorboard_dir is not None:
        sinks.append(TensorBoardSink(tensorboard_dir))
    if wandb_project is not None:
        sinks.append(WandbSink(wandb_project, run_dir, config))
    return sinks
