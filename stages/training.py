"""The one place that builds and runs a ``transformers.Trainer`` with DeepSpeed.

CPT and IFT both call ``train_stage``; they differ only in the data and the
collator they pass. Our schema (``TrainConfig``) is mapped onto
``TrainingArguments`` here and nowhere else, so an upstream rename breaks one
function, not two stages.

On a CPU-only machine the Trainer must be told ``use_cpu=True`` and
``ddp_backend="gloo"``: without them DeepSpeed still trains, but every rank
reads the whole data set (the sampler is not sharded), which is silently wrong.

Every rank runs ``train_stage``. Each optimizer step consumes
``micro_batch_size x grad_accum_steps x world_size`` sequences, a disjoint
share of them on each rank; ``<stage>/samples/rank-NNNNN.jsonl`` records which
sample ids each rank trained at each step, so data order can be audited.

With ``eval_steps`` set, the Trainer also scores the held-out sets of
``stages.heldout`` (``eval_<set>_loss``, logged as ``<stage>/val/<set>_loss``)
at step 0, every ``eval_steps`` steps and at the last step, and rank 0 keeps
``<stage>/val_losses.json``. Evaluation leaves every random generator as it
found it, so the trained weights are the same with it on or off.
"""

from __future__ import annotations

import gc
import math
import json
import logging
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from stages import distributed, heldout, preemption
from stages.checkpoints import CompleteMarker, incomplete, newest_complete
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
    eval_dataset: dict[str, torch.utils.data.Dataset] | None  # held-out sets (stages.heldout); None or {} = none
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


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the message names the step and the checkpoint kept."""


class NonFiniteGuard(TrainerCallback):
    """Stops the stage at the first logged non-finite loss or gradient norm.

    Trainer's ``on_log`` comes before its save at the same step, so a diverged
    model is never written as a checkpoint; ``save_steps`` is a multiple of
    ``logging_steps`` (config.py checks), so every save follows a check. Every
    rank sees the same (all-reduced) values and raises together.
    """

    def __init__(self, stage: str, ckpt_dir: Path) -> None:
        self.stage, self.ckpt_dir = stage, ckpt_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if k in ("loss", "grad_norm") and not math.isfinite(v)}
        if bad:
            kept = newest_complete(self.ckpt_dir) or "none (no checkpoint was saved yet)"
            what = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise TrainingDiverged(f"{self.stage}: {what} at step {state.global_step}; the last good checkpoint is "
                                   f"kept: {kept}; lower {self.stage}.learning_rate or raise warmup_steps, then "
                                   f"delete the checkpoints after it, or rerun to resume from it")
        return control


SAMPLE_ID = "sample_id"


class IndexedDataset(torch.utils.data.Dataset):
    """Tags each training sample with its index, for the sample log."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> dict:
        return dict(self.inner[i]) | {SAMPLE_ID: i}


class SampleLog(TrainerCallback):
    """Writes which sample ids this rank trained at each optimizer step.

    The collator wrapper queues each micro-batch's ids as the dataloader
    fetches them (it may fetch ahead); each finished optimizer step takes its
    micro-batches off the front of the queue, so only trained samples are
    written. On resume, entries after the checkpoint's step are dropped.
    Held-out batches (no sample id) are packed blocks of equal length: they go
    to ``default_data_collator`` whatever the stage trains with, since IFT's
    padding collator would add an attention mask that lets documents attend
    to each other.
    """

    def __init__(self, collator, path: Path) -> None:
        self.collator, self.path = collator, path
        self.pending: deque[list[int]] = deque()
        self.micro_batches = 0

    def __call__(self, features: list[dict]):
        if not features or SAMPLE_ID not in features[0]:
            return default_data_collator(features)
        self.pending.append([f.pop(SAMPLE_ID) for f in features])
        return self.collator(features)

    def on_train_begin(self, args, state, control, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if json.loads(line)["step"] <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_substep_end(self, args, state, control, **kwargs):
        self.micro_batches += 1

    def on_step_end(self, args, state, control, **kwargs):
        ids = [i for _ in range(self.micro_batches + 1) for i in self.pending.popleft()]
        self.micro_batches = 0
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": state.global_step, "ids": ids}) + "\n")


def lr_schedule(cfg: TrainConfig) -> dict:
    """Our schedule presets as TrainingArguments (the DeepSpeed JSONs leave the scheduler to the Trainer).

    cosine: linear re-warm over ``warmup_steps`` to the peak, cosine re-decay to
    ``min_lr_ratio`` of it (arXiv 2308.04014, 2403.08763). wsd: re-warm, hold the
    peak, decay over the last ``decay_fraction`` of the steps (arXiv 2404.06395),
    which lets a run be extended from its stable phase.
    """
    if cfg.lr_schedule == "wsd":
        decay = max(1, round(cfg.decay_fraction * cfg.max_steps))
        return {"lr_scheduler_type": "warmup_stable_decay",
                "lr_scheduler_kwargs": {"num_decay_steps": decay, "min_lr_ratio": cfg.min_lr_ratio,
                                        "decay_type": "cosine"}}
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": cfg.min_lr_ratio}}


def evaluation_arguments(cfg: TrainConfig, run: StageRun, fresh: bool) -> dict:
    """Held-out evaluation every ``eval_steps`` (the Trainer adds the last step), and at step 0 unless resuming:
    a resumed run has step 0 in its checkpoint's log history already."""
    if not (cfg.eval_steps and run.eval_dataset):
        return {"eval_strategy": "no"}
    return {"eval_strategy": "steps", "eval_steps": cfg.eval_steps, "eval_on_start": fresh}


def training_arguments(cfg: TrainConfig, run: StageRun, fresh: bool = True) -> TrainingArguments:
    on_cpu = not torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run.stage_dir / "checkpoints"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        **evaluation_arguments(cfg, run, fresh),
        gradient_accumulation_steps=cfg.grad_accum_steps,
        learning_rate=cfg.learning_rate,
        **lr_schedule(cfg),
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # the default drops NaN losses from the logged mean: NonFiniteGuard must see them
        save_strategy="steps",
        save_steps=cfg.save_steps or cfg.max_steps,
        save_total_limit=2,  # a 135M model's ZeRO checkpoint is ~1.6 GB with optimizer state
        bf16=run.bf16,
        deepspeed=resolve_deepspeed(cfg.deepspeed),
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers' newer name for it
        # Non-reentrant checkpointing works with ZeRO-3's parameter hooks and frozen inputs.
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
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
    """Train on every rank (resuming from the newest checkpoint if one exists), save ``final/``."""
    world = distributed.init()
    # Without a KV cache transformers reads document boundaries from position_ids;
    # with one (the default, even in training) packed documents attend to each other.
    run.model.config.use_cache = False
    resume = resume_point(run)
    args = training_arguments(cfg, run, fresh=resume is None)
    evaluates = args.eval_strategy != "no"
    sample_log = SampleLog(run.collator, run.stage_dir / "samples" / f"rank-{world.rank:05d}.jsonl")
    stop = preemption.StopOnSignal()
    val_log = [heldout.ValLosses(run.stage_dir / "val_losses.json", run.name, cfg.eval_steps,
                                 last_set=list(run.eval_dataset)[-1])] if evaluates else []
    trainer = Trainer(
        model=run.model, args=args, train_dataset=IndexedDataset(run.train_dataset),
        eval_dataset=run.eval_dataset if evaluates else None, data_collator=sample_log,
        processing_class=run.tokenizer,
        callbacks=[sample_log, CompleteMarker(), NonFiniteGuard(run.name, run.stage_dir / "checkpoints"), stop,
                   *val_log, *callbacks],
    )
    # Evaluation advances the global torch generator (every DataLoader iterator draws a seed from it). Each
    # checkpoint saves that generator, and anything random in training (dropout) draws from it; the sampler
    # has its own, seeded by data_seed. Restoring it after every evaluation keeps checkpoints, resumed runs
    # and trained weights identical with evaluation on or off (tests/test_val_losses.py checks rng_state.pth).
    trainer.evaluate = distributed.rng_preserved()(trainer.evaluate)
    try:
        return _train(trainer, run, stop, resume)
    finally:
        # A ZeRO-3 stage leaves a global that would make later from_pretrained
        # calls (evaluation, export on rank 0 alone) load partitioned and hang.
        unset_hf_deepspeed_config()
        del trainer
        gc.collect()


def resume_point(run: StageRun) -> str | None:
    """The newest complete checkpoint of the stage, if any (saying which were incomplete)."""
    ckpt_dir = run.stage_dir / "checkpoints"
    resume = newest_complete(ckpt_dir)
    for broken in incomplete(ckpt_dir):
        log.warning("%s: %s was not completely written (the job stopped while saving); not resuming from it",
                    run.name, broken)
    if resume:
        log.info("%s: resuming from %s", run.name, resume)
    return resume


def _train(trainer: Trainer, run: StageRun, stop: preemption.StopOnSignal, resume: str | None) -> dict:
    result = trainer.train(resume_from_checkpoint=resume)
    if stop.stopped_at is not None:
        raise preemption.Preempted(
            f"{run.name}: stopped by {preemption.requested() or 'a signal on another rank'} after step "
            f"{stop.stopped_at}; saved {run.stage_dir / 'checkpoints' / f'checkpoint-{stop.stopped_at}'}; "
            f"run the same command again to continue from it")
    metrics = dict(result.metrics)
    # The Trainer scored the held-out sets at the last step (it adds that evaluation): report those.
    points = heldout.val_points(trainer.state.log_history)
    if points:
        metrics |= {f"eval_{k}": v for k, v in points[-1].items() if k != "step"}
    save_final(trainer, run.stage_dir / "final")
    return metrics | {"resumed_from": resume}


def save_final(trainer: Trainer, final: Path) -> None:
    """Write the full model + tokenizer to ``final/`` atomically (rank 0 writes)."""
    partial = final.with_name("final.partial")
    trainer.model.config.use_cache = True  # the saved model generates with a cache
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))  # every rank joins: ZeRO-3 gathers shards here
    if trainer.is_world_process_zero():
        (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing needs it to load
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
