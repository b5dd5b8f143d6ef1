"""The one place that builds and runs a ``transformers.Trainer`` with DeepSpeed.

CPT and IFT both call ``train_stage``; they differ only in the data and the
collator they pass. Our schema (``TrainConfig``) is mapped onto
``TrainingArguments`` here and nowhere else, so an upstream rename breaks one
function, not two stages.

On a CPU-only machine the Trainer must be told ``use_cpu=True`` and
``ddp_backend="gloo"``: without them DeepSpeed still trains, but every rank
reads the whole data set (the sampler is not sharded), which is silently wrong.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from stages.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class StageRun:
    """What a training stage needs besides its config."""

    name: str  # "cpt" or "ift": prefixes metric names
    model: torch.nn.Module
    tokenizer: object
    train_dataset: torch.utils.data.Dataset
    eval_dataset: torch.utils.data.Dataset | None
    collator: object
    stage_dir: Path
    seed: int
    bf16: bool


def resolve_deepspeed(path: str) -> dict | None:
    """The DeepSpeed config as a dict; relative paths may also be relative to the repo."""
    if not path:
        return None
    candidates = [Path(path), REPO_ROOT / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"deepspeed: {path} not found; use a JSON from configs/deepspeed/ or \"\" to disable")
    try:
        return json.loads(found.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{found}:{exc.lineno}: invalid JSON in DeepSpeed config ({exc.msg})") from None


def prepare_process_group_env() -> None:
    """Make a plain ``python`` process look like rank 0 of 1, as torchrun would."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        # On CPU DeepSpeed JIT-compiles a shared-memory all-reduce op with g++
        # at init (about 40 s, and a failure without a compiler). gloo does the
        # same collectives; skipping the build gave identical losses.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def training_arguments(cfg: TrainConfig, run: StageRun) -> TrainingArguments:
    on_cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run.stage_dir / "checkpoints"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps or cfg.max_steps,
        save_total_limit=2,  # a 135M model's ZeRO checkpoint is ~1.6 GB with optimizer state
        bf16=run.bf16,
        deepspeed=resolve_deepspeed(cfg.deepspeed),
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu else None,
        seed=run.seed,
        data_seed=run.seed,
        report_to="none",  # W&B goes through stages.tracking with our metric names
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def train_stage(cfg: TrainConfig, run: StageRun, callbacks: list) -> dict:
    """Train (resuming from the newest checkpoint if one exists), save ``final/``."""
    prepare_process_group_env()
    trainer = Trainer(
        model=run.model, args=training_arguments(cfg, run), train_dataset=run.train_dataset,
        eval_dataset=run.eval_dataset, data_collator=run.collator, processing_class=run.tokenizer,
        callbacks=callbacks,
    )
    ckpt_dir = run.stage_dir / "checkpoints"
    resume = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    if resume:
        log.info("%s: resuming from %s", run.name, resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if run.eval_dataset is not None and len(run.eval_dataset):
        metrics.update(trainer.evaluate())
    save_final(trainer, run.stage_dir / "final")
    return metrics | {"resumed_from": resume}


def save_final(trainer: Trainer, final: Path) -> None:
    """Write the full model + tokenizer to ``final/`` atomically (rank 0 writes)."""
    partial = final.with_name("final.partial")
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))  # every rank joins: ZeRO-3 gathers shards here
    if trainer.is_world_process_zero():
        (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing needs it to load
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
