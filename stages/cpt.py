"""Continued pre-training: next-token prediction on packed domain blocks.

    final = run_cpt(cfg, base_model_path, data_dir, run_dir / "cpt", tracker)

Reads only what ``corpora.prepare`` wrote (``cpt_train.npz``/``cpt_val.npz``).
Every block is a full ``seq_len`` row of real tokens (documents joined by EOS),
so labels are the inputs themselves and no attention mask is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import default_data_collator

from stages.config import PipelineConfig
from stages.modeling import load_model, load_tokenizer
from stages.tracking import TrackerCallback
from stages.training import StageRun, train_stage

# Validation loss is a health check, not a benchmark: a few blocks suffice.
MAX_VAL_BLOCKS = 16


class BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        ids = torch.from_numpy(self.blocks[i].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


def load_blocks(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["blocks"]


def cpt_stage(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path) -> StageRun:
    """The model, data and collator of a CPT stage, ready for ``train_stage``."""
    tokenizer = load_tokenizer(model_path)
    # Train from float32 weights: DeepSpeed's bf16 mode keeps fp32 master weights.
    model = load_model(model_path, "float32", cfg.model.attn_implementation)
    return StageRun(
        name="cpt", model=model, tokenizer=tokenizer,
        train_dataset=BlockDataset(load_blocks(data_dir / "cpt_train.npz")),
        eval_dataset=BlockDataset(load_blocks(data_dir / "cpt_val.npz")[:MAX_VAL_BLOCKS]),
        collator=default_data_collator, stage_dir=stage_dir, seed=cfg.run.seed,
        bf16=cfg.model.dtype == "bfloat16",
    )


def run_cpt(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path, tracker) -> dict:
    run = cpt_stage(cfg, model_path, data_dir, stage_dir)
    return train_stage(cfg.cpt, run, [TrackerCallback(tracker, "cpt")])
