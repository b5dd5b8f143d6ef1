"""Held-out losses while a stage trains: is the domain learnt, is general text forgotten?

    sets = heldout_sets(cfg.cpt, data_dir, tokenizer, "cpt")   # {"domain": blocks, "general": blocks}
    trainer = Trainer(..., eval_dataset=sets)                  # eval_steps: eval_domain_loss, eval_general_loss
    ValLosses(stage_dir / "val_losses.json", "cpt", every=10, last_set="general")  # the curve, for the report

Every ``eval_steps`` optimizer steps (and at step 0, and at the last step)
the Trainer scores next-token loss on two sets of ``seq_len`` blocks, each
capped at ``eval_tokens`` tokens:

- ``domain``: the first blocks of the domain corpus's validation split (the
  memory-mapped shards CPT trains from). IFT scores the same text: preparation
  writes no validation split of instruction data (the held-out instruction
  records are the ``qa`` test task), and whether IFT keeps what CPT taught is
  the question. An empty validation split is not replaced by the test split:
  the test documents are the domain perplexity suite, which should stay unseen
  by any choice made while training. The domain loss is then ``null``.
- ``general``: the general suite's perplexity documents
  (``data/eval/general/perplexity.jsonl``), joined by EOS as preparation joins
  the domain documents, and cut into blocks the same way.

Blocks are packed like CPT rows (``corpora.packing.cpt_block``): positions
restart at every document, the first token of each document carries no loss,
and in CPT's ``stream`` mode documents attend across. They are collated with
``default_data_collator``, as CPT and packed IFT batches are. The Trainer
shards the blocks over ranks, so this runs under ZeRO-3 on many ranks.

Rank 0 writes ``<stage>/val_losses.json`` after every evaluation, rebuilt
from the Trainer's ``log_history``: a resumed run starts from its checkpoint's
history, so its file ends equal to an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from corpora.manifest import write_json_atomic
from corpora.packing import cpt_block
from corpora.prepare import read_jsonl
from corpora.shards import TokenShards
from stages import distributed
from stages.config import Packing, TrainConfig
from stages.evaluate import token_stream

log = logging.getLogger(__name__)

NAMES = ("domain", "general")  # the held-out sets, in the order they are scored


class StreamBlocks(torch.utils.data.Dataset):
    """Consecutive ``seq_len`` blocks of an in-memory token stream (a few thousand tokens)."""

    def __init__(self, tokens: np.ndarray, doc_starts: np.ndarray, seq_len: int, mode: str) -> None:
        self.tokens, self.seq_len, self.mode = tokens, seq_len, mode
        self.doc_starts = np.asarray(doc_starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        start, stop = i * self.seq_len, (i + 1) * self.seq_len
        inside = self.doc_starts[(self.doc_starts >= start) & (self.doc_starts < stop)] - start
        row = cpt_block(self.tokens[start:stop], inside, self.mode)
        return {k: torch.from_numpy(v) for k, v in row.items()}


def domain_stream(data_dir: Path, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``max_tokens`` tokens of the domain validation split and where its documents start."""
    info = json.loads((data_dir / "manifest.json").read_text())["cpt"]
    shards = TokenShards(Path(info["corpus"]) / "shards" / "val")
    stop = min(shards.tokens, max_tokens)
    if stop == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return shards.read(0, stop), shards.doc_starts(0, stop)


def general_stream(data_dir: Path, tokenizer, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The general perplexity documents, each followed by EOS, up to ``max_tokens`` tokens (joined as the
    perplexity suite joins them: ``stages.evaluate.token_stream``)."""
    path = data_dir / "eval" / "general" / "perplexity.jsonl"
    stream, _, starts = token_stream(tokenizer, read_jsonl(path) if path.exists() else [], max_tokens)
    return np.asarray(stream, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def heldout_sets(cfg: TrainConfig, data_dir: Path, tokenizer, stage: str) -> dict[str, StreamBlocks]:
    """The non-empty held-out sets of a stage, or ``{}`` when ``eval_steps`` is 0."""
    if not cfg.eval_steps:
        return {}
    # IFT rows keep examples apart (packed or padded), so its held-out text keeps documents apart too.
    mode = Packing.stream.value if cfg.packing == Packing.stream else Packing.documents.value
    cap = max(cfg.eval_tokens, cfg.seq_len)  # at least one block: a longer seq_len needs no second setting
    streams = {"domain": domain_stream(data_dir, cap), "general": general_stream(data_dir, tokenizer, cap)}
    sets = {name: StreamBlocks(tokens, starts, cfg.seq_len, mode) for name, (tokens, starts) in streams.items()}
    why = {"domain": "the domain validation split holds less than one block; raise data.domain.val_fraction",
           "general": "no general perplexity documents (evals.general.perplexity) fill a block"}
    for name in [n for n in NAMES if not len(sets[n])]:
        if distributed.current().is_writer:
            log.warning("%s: %s: %s/val/%s_loss is not computed (null in val_losses.json)",
                        stage, why[name], stage, name)
        del sets[name]
    return sets


def val_points(log_history: list[dict]) -> list[dict]:
    """One point per evaluated step, from the Trainer's log history; a set not scored is ``None``."""
    points: dict[int, dict] = {}
    for entry in log_history:
        for name in NAMES:
            if f"eval_{name}_loss" in entry:
                point = points.setdefault(entry["step"], {"step": entry["step"]} | {f"{n}_loss": None for n in NAMES})
                point[f"{name}_loss"] = entry[f"eval_{name}_loss"]
    return [points[step] for step in sorted(points)]


class ValLosses(TrainerCallback):
    """Rank 0 rewrites ``val_losses.json`` from the log history at the start and after each evaluation.

    The Trainer scores a dict of sets one ``evaluate`` call (and one ``on_evaluate``) per set, in order:
    the file is written after the call of ``last_set``, when the step's point is whole.
    """

    def __init__(self, path: Path, stage: str, every: int, last_set: str) -> None:
        self.path, self.stage, self.every, self.last_set = path, stage, every, last_set

    def write(self, state) -> None:
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"stage": self.stage, "every": self.every,
                                          "points": val_points(state.log_history)})

    def on_train_begin(self, args, state, control, **kwargs):
        self.write(state)  # on resume: drops points a killed run scored after its checkpoint

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if f"eval_{self.last_set}_loss" in (metrics or {}):
            self.write(state)
