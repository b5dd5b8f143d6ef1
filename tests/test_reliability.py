"""Never lose work: complete checkpoints only, exact resume after a kill mid-save, run locks, the NaN guard."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.checkpoints import MARKER, newest_complete
from stages.runlock import RunLock, RunLocked
from tests import jobs

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["configs/tiny.yaml", "--until", "cpt", "model.dtype=float32", "tracking.wandb.mode=disabled"]

# A run that SIGKILLs itself while Trainer writes checkpoint-12: after the model
# weights, before the optimizer state and our completeness marker.
KILL_IN_SAVE = r"""
import os, signal, sys
import transformers
original = transformers.Trainer._save_optimizer_and_scheduler
def dying(self, output_dir):
    if self.state.global_step == 12:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = dying
from stages.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_newest_complete_skips_a_checkpoint_without_its_marker(tmp_path):
    for step, done in ((6, True), (12, False), (3, True)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if done:
            (tmp_path / f"checkpoint-{step}" / MARKER).write_text("{}")
    assert newest_complete(tmp_path) == str(tmp_path / "checkpoint-6")
    assert newest_complete(tmp_path / "absent") is None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, isolated_cache) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    jobs.ok(jobs.cptift("run", *COMMON, f"run.output_dir={out}"))
    return out


@pytest.mark.slow
def test_a_kill_while_saving_resumes_from_the_previous_complete_checkpoint(uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, "run", *COMMON, f"run.output_dir={out}"],
                            cwd=ROOT, capture_output=True, text=True, env=jobs.env(), timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = out / "cpt" / "checkpoints"
    assert (ckpts / "checkpoint-12").is_dir() and not (ckpts / "checkpoint-12" / MARKER).exists()
    assert newest_complete(ckpts) == str(ckpts / "checkpoint-6")

    rerun = jobs.ok(jobs.cptift("run", *COMMON, f"run.output_dir={out}"))
    assert "checkpoint-12 was not completely written" in rerun.stderr
    assert "resuming from" in rerun.stderr and "checkpoint-6" in rerun.stderr
    # float32 on one process: the resumed run is bit-identical to the uninterrupted one.
    w_whole, w_resumed = jobs.weights(uninterrupted / "cpt" / "final"), jobs.weights(out / "cpt" / "final")
    assert jobs.max_weight_diff(w_whole, w_resumed) == 0.0
    # The same batches after the resume point, and the same logged losses.
    assert jobs.sample_log(out / "cpt", 0) == jobs.sample_log(uninterrupted / "cpt", 0)
    after = [(step, loss) for step, loss in jobs.logged_losses(out) if step > 6]
    assert after == [(s, v) for s, v in jobs.logged_losses(uninterrupted) if s > 6]
    assert [s for s, _ in after] == [8, 10, 12]


def test_a_second_run_on_a_locked_directory_is_refused_and_a_stale_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from stages.runlock import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=rf"in use by another run \(host \S+, PID {holder.pid}, since"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path).acquire()  # the holder died: its lock is stale
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_cli_refuses_a_locked_run_directory_with_exit_2(tmp_path, capsys):
    from stages.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"host": "node-17", "pid": 4242, "started": time.time(),
                                              "slurm_job": None}))
    assert main(["run", "configs/tiny.yaml", f"run.output_dir={out}", "tracking.wandb.mode=disabled"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "in use by another run (host node-17, PID 4242" in err and f"delete {out / 'run.lock'}" in err
    assert not (out / "steps").exists()  # nothing was started


def test_the_nan_guard_names_the_step_and_the_checkpoint_kept(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from stages.training import NonFiniteGuard, TrainingDiverged

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / MARKER).write_text("{}")
    guard, state = NonFiniteGuard("cpt", tmp_path), TrainerState(global_step=6)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    guard.on_log(args, state, TrainerControl(), logs={"loss": 2.5, "grad_norm": 1.0})  # finite: nothing
    with pytest.raises(TrainingDiverged, match=r"cpt: loss = nan at step 6; the last good checkpoint is kept: "
                                               rf"{tmp_path}/checkpoint-4; lower cpt.learning_rate"):
        guard.on_log(args, state, TrainerControl(), logs={"loss": math.nan, "grad_norm": 1.0})
    with pytest.raises(TrainingDiverged, match="grad_norm = inf"):
        guard.on_log(args, state, TrainerControl(), logs={"loss": 1.0, "grad_norm": math.inf})


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_exits_75_and_the_rerun_ends_at_the_same_weights(uninterrupted, tmp_path):
    from stages.preemption import EXIT_PREEMPTED

    out = tmp_path / "run"
    job = jobs.start([str(jobs.BIN / "cptift"), "run", *COMMON, f"run.output_dir={out}", "cpt.save_steps=12"],
                     tmp_path / "job.log")
    samples = out / "cpt" / "samples" / "rank-00000.jsonl"
    deadline = time.time() + 300
    while not (samples.exists() and len(samples.read_text().splitlines()) >= 3):  # 3 steps trained
        assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=300) == EXIT_PREEMPTED, (tmp_path / "job.log").read_text()[-3000:]
    log = (tmp_path / "job.log").read_text()
    saved = [p for p in (out / "cpt" / "checkpoints").glob("checkpoint-*") if (p / MARKER).exists()]
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("-")[1]) < 12  # not a scheduled save (those: 12)
    assert f"preempted: cpt: stopped by SIGUSR1 after step {saved[0].name.split('-')[1]}" in log
    assert not (out / "steps" / "cpt.json").exists() and (out / "steps" / "eval_base.json").exists()

    jobs.ok(jobs.cptift("run", *COMMON, f"run.output_dir={out}", "cpt.save_steps=12"))
    assert jobs.max_weight_diff(jobs.weights(uninterrupted / "cpt" / "final"), jobs.weights(out / "cpt" / "final")) == 0
