"""Training settings reach the Trainer, and gradient checkpointing changes memory, not the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.config import TrainConfig
from stages.training import StageRun, training_arguments
from tests import jobs


@pytest.fixture
def one_process_group():
    """Rank 0 of 1, as train_stage sets it up: on CPU the Trainer's arguments need a gloo group."""
    with jobs.rank_zero_of_one():
        yield


def test_gradient_checkpointing_setting_reaches_the_trainer(tmp_path, one_process_group):
    run = StageRun(name="cpt", model=None, tokenizer=None, train_dataset=None, eval_dataset=None, collator=None,
                   stage_dir=Path(tmp_path), seed=0, bf16=False)
    on = training_arguments(TrainConfig(gradient_checkpointing=True, deepspeed=""), run)
    off = training_arguments(TrainConfig(deepspeed=""), run)
    assert on.activation_checkpointing and on.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert not off.activation_checkpointing


@pytest.mark.slow
def test_gradient_checkpointing_under_zero3_trains_the_same_weights(tmp_path, isolated_cache):
    common = ["run", "configs/tiny.yaml", "--until", "cpt", "model.dtype=float32", "cpt.max_steps=4",
              "cpt.deepspeed=configs/deepspeed/zero3.json", "tracking.wandb.mode=disabled"]
    jobs.ok(jobs.cptift(*common, f"run.output_dir={tmp_path / 'plain'}"))
    jobs.ok(jobs.cptift(*common, "cpt.gradient_checkpointing=true", f"run.output_dir={tmp_path / 'ckpt'}"))
    plain, ckpt = (jobs.weights(tmp_path / name / "cpt" / "final") for name in ("plain", "ckpt"))
    # Recomputing a layer's forward in the backward pass repeats the same float32 operations.
    assert jobs.max_weight_diff(plain, ckpt) < 1e-6


@pytest.mark.parametrize("path", sorted(Path("configs/deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_configs_leave_trainer_values_to_our_config(path):
    """Batch sizes, clipping and precision come from cptift's config through the Trainer, stated once."""
    from stages.training import resolve_deepspeed

    ds = resolve_deepspeed(str(path))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
    zero = ds["zero_optimization"]
    assert zero["stage"] in (1, 2, 3)
    if zero["stage"] == 3:  # sizes that scale with the model: a fixed number breaks small or large ones
        assert zero["stage3_param_persistence_threshold"] == zero["stage3_prefetch_bucket_size"] == "auto"
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # final/ is a loadable HF folder
    for value in ds.get("optimizer", {}).get("params", {}).values():
        assert value == "auto"
