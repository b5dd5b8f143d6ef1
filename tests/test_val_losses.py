"""Held-out domain and general loss during training: at the configured steps, right, and harmless.

One tiny CPT stage (configs/tiny.yaml: 12 steps, held-out loss every 6, float32,
DeepSpeed ZeRO-2 on one process) is trained in this process with evaluation on
and once with it off; the tests marked slow read what both wrote (about 20 s
in all on 2 cores).

    pytest tests/test_val_losses.py
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corpora.chat import IGNORE_INDEX
from corpora.packing import cpt_block
from corpora.prepare import prepare, read_jsonl
from corpora.shards import TokenShards
from stages.config import ConfigError, TrainConfig, load_config
from stages.cpt import run_cpt
from stages.heldout import StreamBlocks, heldout_sets, val_points
from stages.modeling import load_model, load_tokenizer
from stages.pipeline import spec_from_config
from tests import jobs


class RecordingTracker:
    """A stand-in for W&B (stages.tracking.WandbTracker): keeps what would have been logged."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def process_group():
    with jobs.rank_zero_of_one():
        yield


def tiny_config(out, *overrides):
    return load_config("configs/tiny.yaml", [f"run.output_dir={out}", "model.dtype=float32",
                                             "tracking.wandb.mode=disabled", "data.engine.workers=1", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, process_group):
    """Prepared data, then CPT with held-out evaluation (``on``) and without (``off``), same seed."""
    root = tmp_path_factory.mktemp("val")
    cfg = tiny_config(root)
    data = root / "data"
    prepare(spec_from_config(cfg), load_tokenizer(tiny_model_dir), data)
    tracker = RecordingTracker()
    on = run_cpt(cfg, tiny_model_dir, data, root / "on" / "cpt", tracker)
    off = run_cpt(tiny_config(root, "cpt.eval_steps=0"), tiny_model_dir, data, root / "off" / "cpt",
                  RecordingTracker())
    return {"cfg": cfg, "data": data, "root": root, "tracker": tracker, "on": on, "off": off}


@pytest.mark.slow
def test_points_at_the_configured_steps_reach_the_file_and_the_tracker(runs):
    curve = json.loads((runs["root"] / "on" / "cpt" / "val_losses.json").read_text())
    assert curve["stage"] == "cpt" and curve["every"] == 6
    assert [p["step"] for p in curve["points"]] == [0, 6, 12]  # before training, every 6 steps
    for point in curve["points"]:
        assert set(point) == {"step", "domain_loss", "general_loss"}
        assert math.isfinite(point["domain_loss"]) and math.isfinite(point["general_loss"])
    # A random model at lr 1e-3 for 12 steps on the domain: the domain loss falls.
    assert curve["points"][-1]["domain_loss"] < curve["points"][0]["domain_loss"]
    logged = {(step, k): v for step, metrics in runs["tracker"].logged for k, v in metrics.items()}
    for point in curve["points"]:
        assert logged[(point["step"], "cpt/val/domain_loss")] == point["domain_loss"]
        assert logged[(point["step"], "cpt/val/general_loss")] == point["general_loss"]
    # The stage's metrics carry the last point; with evaluation off there is no file and no such metric.
    assert runs["on"]["eval_domain_loss"] == curve["points"][-1]["domain_loss"]
    assert not (runs["root"] / "off" / "cpt" / "val_losses.json").exists()
    assert "eval_domain_loss" not in runs["off"]


def _hand_loss(model, rows: list[dict], batch: int) -> float:
    """The Trainer's eval loss, by hand: each batch's mean next-token loss over labelled tokens, averaged."""
    losses = []
    for i in range(0, len(rows), batch):
        group = rows[i:i + batch]
        ids = torch.stack([torch.as_tensor(r["input_ids"]) for r in group])
        labels = torch.stack([torch.as_tensor(r["labels"]) for r in group])
        pos = torch.stack([torch.as_tensor(r["position_ids"]) for r in group])
        with torch.no_grad():
            logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
        losses.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                      ignore_index=IGNORE_INDEX).item())
    return sum(losses) / len(losses)


def _blocks(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> list[dict]:
    rows = []
    for a in range(0, len(tokens) - seq_len + 1, seq_len):
        inside = starts[(starts >= a) & (starts < a + seq_len)] - a
        rows.append(cpt_block(tokens[a:a + seq_len], inside, "documents"))
    return rows


@pytest.mark.slow
def test_the_losses_equal_a_plain_forward_pass_of_the_checkpoint(runs, tiny_model_dir):
    cfg, data = runs["cfg"], runs["data"]
    seq_len, cap = cfg.cpt.seq_len, cfg.cpt.eval_tokens
    tokenizer = load_tokenizer(tiny_model_dir)
    # The domain blocks, by hand: the first eval_tokens of the validation shards, cut every seq_len.
    corpus = json.loads((data / "manifest.json").read_text())["cpt"]["corpus"]
    shards = TokenShards(Path(corpus) / "shards" / "val")
    assert shards.tokens >= cap, "the tiny config's validation split should fill eval_tokens"
    domain = _blocks(shards.read(0, cap), shards.doc_starts(0, cap), seq_len)
    # The general blocks, by hand: perplexity documents joined by EOS.
    stream, starts = [], []
    for doc in read_jsonl(data / "eval" / "general" / "perplexity.jsonl"):
        starts.append(len(stream))
        stream += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    general = _blocks(np.array(stream[:cap]), np.array(starts), seq_len)
    assert len(domain) == len(general) == cap // seq_len
    sets = heldout_sets(cfg.cpt, data, tokenizer, "cpt")  # what the Trainer scored
    for name, rows in (("domain", domain), ("general", general)):
        for row, got in zip(rows, sets[name]):
            assert all(torch.equal(torch.as_tensor(row[k]), got[k]) for k in row)
    model = load_model(str(runs["root"] / "on" / "cpt" / "checkpoints" / "checkpoint-6"), "float32",
                       cfg.model.attn_implementation).eval()
    point = json.loads((runs["root"] / "on" / "cpt" / "val_losses.json").read_text())["points"][1]
    assert point["step"] == 6
    assert abs(point["domain_loss"] - _hand_loss(model, domain, cfg.cpt.micro_batch_size)) < 1e-5
    assert abs(point["general_loss"] - _hand_loss(model, general, cfg.cpt.micro_batch_size)) < 1e-5


@pytest.mark.slow
def test_evaluation_does_not_change_the_trained_weights_or_the_random_state(runs):
    on, off = (jobs.weights(runs["root"] / name / "cpt" / "final") for name in ("on", "off"))
    assert jobs.max_weight_diff(on, off) == 0.0
    assert jobs.sample_log(runs["root"] / "on" / "cpt", 0) == jobs.sample_log(runs["root"] / "off" / "cpt", 0)
    # Evaluation draws from the global torch generator (its DataLoader takes a seed); the checkpoints,
    # saved right after an evaluation, must hold the generators of a run without one, or a resumed run
    # (and anything random in training, such as dropout) would diverge. Without the restore, "cpu" differs.
    for ckpt in ("checkpoint-6", "checkpoint-12"):
        a, b = (torch.load(runs["root"] / name / "cpt" / "checkpoints" / ckpt / "rng_state.pth", weights_only=False)
                for name in ("on", "off"))
        assert torch.equal(a["cpu"], b["cpu"]) and a["python"] == b["python"]
        assert np.array_equal(a["numpy"][1], b["numpy"][1])


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_uninterrupted_curve(runs, tiny_model_dir):
    """Killed after scoring step 12 but before its checkpoint: the rerun keeps 0 and 6 and scores 12 again."""
    whole_dir, stage = runs["root"] / "on" / "cpt", runs["root"] / "resumed" / "cpt"
    shutil.copytree(whole_dir / "checkpoints" / "checkpoint-6", stage / "checkpoints" / "checkpoint-6")
    whole = json.loads((whole_dir / "val_losses.json").read_text())
    stale = whole | {"points": whole["points"][:2] + [{"step": 12, "domain_loss": 0.0, "general_loss": 0.0}]}
    (stage / "val_losses.json").write_text(json.dumps(stale))
    run_cpt(runs["cfg"], tiny_model_dir, runs["data"], stage, RecordingTracker())
    assert json.loads((stage / "val_losses.json").read_text()) == whole


def test_an_empty_set_is_left_out_and_named(tmp_path, tiny_tokenizer, caplog):
    (tmp_path / "corpus" / "shards" / "val").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"cpt": {"corpus": str(tmp_path / "corpus")}}))
    (tmp_path / "eval" / "general").mkdir(parents=True)
    (tmp_path / "eval" / "general" / "perplexity.jsonl").write_text(json.dumps({"text": "word " * 400}) + "\n")
    cfg = TrainConfig(seq_len=32, eval_steps=5, eval_tokens=100)
    sets = heldout_sets(cfg, tmp_path, tiny_tokenizer, "cpt")
    assert list(sets) == ["general"] and len(sets["general"]) == 3  # 100 tokens: 3 whole blocks of 32
    assert "domain validation split holds less than one block" in caplog.text
    assert val_points([{"eval_general_loss": 2.5, "step": 5}]) == [{"step": 5, "domain_loss": None,
                                                                    "general_loss": 2.5}]
    assert heldout_sets(TrainConfig(eval_steps=0), tmp_path, tiny_tokenizer, "cpt") == {}


def test_stream_blocks_restart_positions_at_each_document():
    blocks = StreamBlocks(np.arange(10, 20), np.array([0, 3, 8]), 5, "documents")
    assert len(blocks) == 2
    assert blocks[0]["position_ids"].tolist() == [0, 1, 2, 0, 1]
    assert blocks[0]["labels"].tolist() == [10, 11, 12, IGNORE_INDEX, 14]
    assert blocks[1]["position_ids"].tolist() == [0, 1, 2, 0, 1]  # a block starts mid-document at position 0
    assert blocks[1]["labels"].tolist() == [15, 16, 17, IGNORE_INDEX, 19]


def test_eval_tokens_is_checked_and_rounded_up_to_a_block():
    with pytest.raises(ConfigError, match="eval_tokens must be positive"):
        TrainConfig(seq_len=512, eval_steps=10, eval_tokens=0)
    TrainConfig(seq_len=512, eval_steps=10, eval_tokens=256)  # scores one block of 512 (stages/heldout.py)
    with pytest.raises(ConfigError, match="eval_steps"):
        TrainConfig(eval_steps=-1)
