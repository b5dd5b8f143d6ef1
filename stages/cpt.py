"""Continued pre-training: next-token prediction on packed domain blocks (plus replay).

    final = run_cpt(cfg, base_model_path, data_dir, run_dir / "cpt", tracker)

Reads only what ``corpora.prepare`` wrote: the memory-mapped token shards of
the domain corpus (and of the replay corpus), whose location the run's
``manifest.json`` records. Block ``i`` of the domain stream is tokens
``[i * seq_len, (i + 1) * seq_len)``; nothing but the pages a batch touches is
read, so memory stays flat however large the corpus. With ``cpt.packing:
documents`` (the default) each row carries ``position_ids`` that restart at
every document, so no document attends to the one before it. With
``cpt.eval_steps`` set, the held-out losses of ``stages.heldout`` (domain
validation split, general text) are scored as it trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import default_data_collator

from corpora.packing import cpt_block, replay_order
from corpora.shards import TokenShards
from stages.config import PipelineConfig
from stages.heldout import heldout_sets
from stages.modeling import load_model, load_tokenizer
from stages.tracking import TrackerCallback
from stages.training import StageRun, train_stage


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length blocks of a token stream; optionally followed by replay blocks.

    Indices ``[0, n_domain)`` are domain blocks in stream order and the rest
    are replay blocks (``replay_order`` picks which); the trainer's seeded
    sampler interleaves the two over the whole stage.
    """

    def __init__(self, shards: TokenShards, seq_len: int, mode: str, replay: TokenShards | None = None,
                 replay_ratio: float = 0.0, seed: int = 0) -> None:
        self.shards, self.seq_len, self.mode, self.replay = shards, seq_len, mode, replay
        self.n_domain = shards.tokens // seq_len
        available = replay.tokens // seq_len if replay is not None else 0
        self.replay_blocks = replay_order(self.n_domain, available, replay_ratio, seed)

    def __len__(self) -> int:
        return self.n_domain + len(self.replay_blocks)

    def __getitem__(self, i: int) -> dict:
        shards, block = (self.shards, i) if i < self.n_domain else \
            (self.replay, int(self.replay_blocks[i - self.n_domain]))
        start, stop = block * self.seq_len, (block + 1) * self.seq_len
        row = cpt_block(shards.read(start, stop), shards.doc_starts(start, stop), self.mode)
        return {k: torch.from_numpy(v) for k, v in row.items()}


def cpt_dataset(cfg: PipelineConfig, data_dir: Path) -> BlockDataset:
    info = json.loads((data_dir / "manifest.json").read_text())["cpt"]
    corpus, seq_len, mode = Path(info["corpus"]), cfg.cpt.seq_len, cfg.cpt.packing
    replay = TokenShards(Path(info["replay"]) / "shards" / "train") if info.get("replay") else None
    return BlockDataset(TokenShards(corpus / "shards" / "train"), seq_len, mode, replay,
                        info.get("replay_ratio", 0.0), cfg.run.seed)


def cpt_stage(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path) -> StageRun:
    """The model, data and collator of a CPT stage, ready for ``train_stage``."""
    tokenizer = load_tokenizer(model_path, cfg.model.trust_remote_code)
    # Train from float32 weights: DeepSpeed's bf16 mode keeps fp32 master weights.
    model = load_model(model_path, "float32", cfg.model.attn_implementation, cfg.model.trust_remote_code)
    return StageRun(
        name="cpt", model=model, tokenizer=tokenizer, train_dataset=cpt_dataset(cfg, data_dir),
        eval_dataset=heldout_sets(cfg.cpt, data_dir, tokenizer, "cpt"),
        collator=default_data_collator, stage_dir=stage_dir, seed=cfg.run.seed,
        bf16=cfg.model.dtype == "bfloat16",
    )


def run_cpt(cfg: PipelineConfig, model_path: str, data_dir: Path, stage_dir: Path, tracker) -> dict:
    run = cpt_stage(cfg, model_path, data_dir, stage_dir)
    return train_stage(cfg.cpt, run, [TrackerCallback(tracker, "cpt")])
