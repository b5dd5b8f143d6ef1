"""Instruction fine-tuning of the CPT checkpoint on rendered chat examples.

    final = run_ift(cfg, cpt_final_path, data_dir, run_dir / "ift", tracker)

Examples come from ``ift_train.jsonl`` (written by ``corpora.prepare``) with
labels already -100 on every prompt token; batches are padded to the longest
example and the padding is masked out of the loss as well.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

from corpora.chat import IGNORE_INDEX
from corpora.prepare import read_jsonl
from stages.config import PipelineConfig
from stages.modeling import load_model, load_tokenizer
from stages.tracking import TrackerCallback
from stages.training import StageRun, train_stage


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, path: Path) -> None:
        self.rows = read_jsonl(path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {"input_ids": row["input_ids"], "labels": row["labels"],
                "attention_mask": [1] * len(row["input_ids"])}


def run_ift(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path, tracker) -> dict:
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, "float32", cfg.model.attn_implementation)
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    run = StageRun(
        name="ift", model=model, tokenizer=tokenizer,
        train_dataset=ExampleDataset(data_dir / "ift_train.jsonl"), eval_dataset=None,
        collator=collator, stage_dir=stage_dir, seed=cfg.run.seed, bf16=cfg.model.dtype == "bfloat16",
    )
    return train_stage(cfg.ift, run, [TrackerCallback(tracker, "ift")])
