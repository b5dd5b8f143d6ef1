"""Weights & Biases tracking: one run per pipeline step, grouped by pipeline run.

    with start_run(cfg, job_type="cpt") as tracker:
        tracker.log({"cpt/train/loss": 2.1}, step=10)

Only rank 0 logs. With no ``WANDB_API_KEY`` an ``online`` request falls back
to ``offline`` (runs land in ``<output_dir>/wandb`` for a later ``wandb sync``),
because ``wandb.init`` would otherwise stop at once asking for a key.
``disabled`` yields a null tracker that records nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from stages.config import PipelineConfig, WandbMode, to_dict

log = logging.getLogger(__name__)


class NullTracker:
    """Stands in for W&B when tracking is disabled or on ranks other than 0."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        pass


class WandbTracker:
    def __init__(self, run) -> None:
        self.run = run

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=columns, data=rows)})


def effective_mode(requested: WandbMode) -> WandbMode:
    if requested == WandbMode.online and not os.environ.get("WANDB_API_KEY"):
        log.warning("tracking.wandb.mode=online but WANDB_API_KEY is not set: logging offline instead")
        return WandbMode.offline
    return requested


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def start_run(cfg: PipelineConfig, job_type: str) -> Iterator[NullTracker | WandbTracker]:
    mode = effective_mode(cfg.tracking.wandb.mode)
    if mode == WandbMode.disabled or not _is_rank_zero():
        yield NullTracker()
        return
    import wandb

    wandb_dir = Path(cfg.run.output_dir) / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.tracking.wandb.project, group=cfg.run.name, job_type=job_type,
        name=f"{cfg.run.name}-{job_type}", config=to_dict(cfg), dir=str(wandb_dir), mode=mode.value,
        reinit="finish_previous",
    )
    try:
        yield WandbTracker(run)
    finally:
        run.finish()


class TrackerCallback(TrainerCallback):
    """Forwards Trainer logs as ``<stage>/train/<name>`` (and ``<stage>/val/...`` for eval)."""

    def __init__(self, tracker, stage: str) -> None:
        self.tracker, self.stage = tracker, stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {}
        for key, value in logs.items():
            if not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):
                metrics[f"{self.stage}/val/{key[5:]}"] = value
            else:
                metrics[f"{self.stage}/train/{key}"] = value
        self.tracker.log(metrics, step=state.global_step)
