"""LR schedule presets: re-warm then cosine re-decay, and warmup-stable-decay, as the Trainer builds them."""

import pytest
import torch
from transformers import get_scheduler

from stages.config import ConfigError, TrainConfig
from stages.training import lr_schedule


def _lrs(cfg: TrainConfig) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.learning_rate)
    spec = lr_schedule(cfg)
    sched = get_scheduler(spec["lr_scheduler_type"], opt, num_warmup_steps=cfg.warmup_steps,
                          num_training_steps=cfg.max_steps, scheduler_specific_kwargs=spec["lr_scheduler_kwargs"])
    out = []
    for _ in range(cfg.max_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_rewarms_then_decays_to_the_floor():
    lrs = _lrs(TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1))
    assert lrs[0] == 0 and lrs[10] == pytest.approx(1e-3)  # linear re-warm from 0 to the peak
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only down
    assert lrs[-1] == pytest.approx(1e-4, rel=0.05)


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    lrs = _lrs(TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1,
                           lr_schedule="wsd", decay_fraction=0.2))
    assert lrs[10] == pytest.approx(1e-3) and lrs[79] == pytest.approx(1e-3)  # stable until decay starts
    assert lrs[81] < 1e-3 and lrs[-1] == pytest.approx(1e-4, rel=0.1)


def test_wsd_needs_room_for_warmup_and_decay():
    with pytest.raises(ConfigError, match="wsd"):
        TrainConfig(max_steps=10, warmup_steps=5, lr_schedule="wsd", decay_fraction=0.6)
