"""W&B wiring: metric names, the no-key fallback, and the disabled tracker."""

from types import SimpleNamespace

from stages.config import WandbMode
from stages.tracking import NullTracker, TrackerCallback, effective_mode


class Recorder:
    """Records what would be sent to W&B (the real client is exercised offline in the e2e test)."""

    def __init__(self):
        self.calls = []

    def log(self, metrics, step=None):
        self.calls.append((metrics, step))


def test_trainer_logs_become_stage_prefixed_metrics():
    rec = Recorder()
    cb = TrackerCallback(rec, "cpt")
    state = SimpleNamespace(is_world_process_zero=True, global_step=10)
    cb.on_log(None, state, None, logs={"loss": 2.5, "learning_rate": 1e-4, "eval_loss": 2.7, "note": "x"})
    assert rec.calls == [({"cpt/train/loss": 2.5, "cpt/train/learning_rate": 1e-4, "cpt/val/loss": 2.7}, 10)]


def test_only_rank_zero_logs():
    rec = Recorder()
    TrackerCallback(rec, "ift").on_log(None, SimpleNamespace(is_world_process_zero=False, global_step=1),
                                       None, logs={"loss": 1.0})
    assert rec.calls == []


def test_online_without_key_falls_back_to_offline(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert effective_mode(WandbMode.online) == WandbMode.offline
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert effective_mode(WandbMode.online) == WandbMode.online
    assert effective_mode(WandbMode.disabled) == WandbMode.disabled


def test_disabled_tracking_writes_nothing(tmp_path):
    from stages.config import load_config
    from stages.tracking import start_run

    cfg = load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", "tracking.wandb.mode=disabled"])
    with start_run(cfg, job_type="eval") as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log({"eval/general/perplexity": 1.0})
    assert not (tmp_path / "wandb").exists()
