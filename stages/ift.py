"""Instruction fine-tuning of the CPT checkpoint on rendered chat examples.

    final = run_ift(cfg, cpt_final_path, data_dir, run_dir / "ift", tracker)

Examples come from ``ift_train.jsonl`` (written by ``corpora.prepare``) with
labels already -100 on every prompt token. With ``ift.packing: documents``
(the default) examples are packed into ``ift.seq_len`` blocks by best-fit
decreasing, each with ``position_ids`` restarting at 0 so that no example
attends to another, and only each block's end is padded. With ``padded``
each row is one example, padded to the longest in its batch; the loss is the
same (tests/test_doc_packing.py), the padding is not.

With ``ift.eval_steps`` set, the held-out losses of ``stages.heldout`` are
scored as it trains: the domain validation text (preparation keeps no
validation split of instruction data) and general text, in ``ift.seq_len``
blocks, so the curve shows whether IFT keeps what CPT taught.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, default_data_collator

from corpora.chat import IGNORE_INDEX
from corpora.packing import ift_block, pack_examples
from corpora.prepare import read_jsonl
from stages.config import PipelineConfig
from stages.heldout import heldout_sets
from stages.modeling import load_model, load_tokenizer
from stages.tracking import TrackerCallback
from stages.training import StageRun, train_stage


class ExampleDataset(torch.utils.data.Dataset):
    """One example per row (the ``padded`` mode)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {"input_ids": row["input_ids"], "labels": row["labels"],
                "attention_mask": [1] * len(row["input_ids"])}


class PackedExampleDataset(torch.utils.data.Dataset):
    """Several examples per ``seq_len`` row, attention kept within each (the ``documents`` mode)."""

    def __init__(self, rows: list[dict], seq_len: int, pad_id: int) -> None:
        self.rows, self.seq_len, self.pad_id = rows, seq_len, pad_id
        self.blocks = pack_examples([len(r["input_ids"]) for r in rows], seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict:
        row = ift_block([self.rows[k] for k in self.blocks[i]], self.seq_len, self.pad_id)
        return {k: torch.from_numpy(v) for k, v in row.items()}


def ift_dataset(cfg: PipelineConfig, data_dir: Path, tokenizer) -> tuple[torch.utils.data.Dataset, object]:
    """The training set and its collator for ``ift.packing``."""
    rows = read_jsonl(data_dir / "ift_train.jsonl")
    if cfg.ift.packing == "padded":
        return ExampleDataset(rows), DataCollatorForSeq2Seq(tokenizer, padding="longest",
                                                            label_pad_token_id=IGNORE_INDEX)
    return PackedExampleDataset(rows, cfg.ift.seq_len, tokenizer.pad_token_id), default_data_collator


def run_ift(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path, tracker) -> dict:
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    model = load_model(model_path, "float32", cfg.model.attn_implementation, cfg.model.trust_remote_code)
    dataset, collator = ift_dataset(cfg, data_dir, tokenizer)
    run = StageRun(
        name="ift", model=model, tokenizer=tokenizer, train_dataset=dataset,
        eval_dataset=heldout_sets(cfg.ift, data_dir, tokenizer, "ift"),
        collator=collator, stage_dir=stage_dir, seed=cfg.run.seed, bf16=cfg.model.dtype == "bfloat16",
    )
    return train_stage(cfg.ift, run, [TrackerCallback(tracker, "ift")])
