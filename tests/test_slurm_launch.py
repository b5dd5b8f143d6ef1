"""The rendered launch/slurm.sbatch runs the tiny pipeline on a real single-host Slurm.

``cptift launch --executor slurm`` renders the script into the run directory
and submits it with the real ``sbatch``; slurmd runs it, ``srun`` starts one
torchrun on the node and torchrun starts 2 ranks. Where Slurm cannot be
installed or started (not root, no apt-get) the test is skipped with the
reason, unless CPTIFT_REQUIRE_SLURM=1 (set by .ci/run as root) makes it fail.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests import jobs
from tests.slurm_cluster import slurm  # noqa: F401  (pytest fixture)
from tests.test_launch import assert_one_complete_run

pytestmark = pytest.mark.slow


def test_sbatch_runs_the_tiny_pipeline_on_two_ranks(slurm, tmp_path, isolated_cache):  # noqa: F811
    out = tmp_path / "run"
    submit = subprocess.run(
        [str(jobs.BIN / "cptift"), "launch", "configs/tiny.yaml", f"run.output_dir={out}", "--executor", "slurm",
         "--nodes", "1", "--gpus-per-node", "2"],
        cwd=jobs.ROOT, env=jobs.env() | {"SLURM_CONF": slurm.env["SLURM_CONF"]}, capture_output=True, text=True,
        timeout=120)
    jobs.ok(submit)
    job = re.search(r"submitted job (\d+)", submit.stdout).group(1)
    rendered = (out / "launch" / "slurm.sbatch").read_text()
    assert "export CPTIFT_NPROC_PER_NODE=2" in rendered and "#SBATCH --gpus-per-node" not in rendered
    state = slurm.wait(job, timeout_s=600)
    job_log = out / "logs" / f"slurm-{job}.out"
    assert state == "COMPLETED", f"{state}\n{job_log.read_text()[-4000:] if job_log.exists() else slurm.logs()}"
    assert_one_complete_run(out, processes=2)
    assert "1 node(s) x 2 process(es)" in job_log.read_text()
    ranks = sorted(p.parent.name for p in out.glob(f"logs/slurm-{job}/node0/restart0/*/attempt_0/*/stdout.log"))
    assert ranks == ["0", "1"], "every rank's log is kept"


def test_the_time_limit_signal_checkpoints_requeues_and_the_job_finishes(slurm, tmp_path, isolated_cache):  # noqa: F811
    """USR1 to the batch shell (what --signal=B:USR1@300 sends before the time limit): every rank saves
    a checkpoint and exits 75, the script requeues the job, and the requeued run resumes and completes."""
    out = tmp_path / "run"
    submit = subprocess.run(
        [str(jobs.BIN / "cptift"), "launch", "configs/tiny.yaml", f"run.output_dir={out}", "cpt.save_steps=12",
         "--executor", "slurm", "--nodes", "1", "--gpus-per-node", "2"],
        cwd=jobs.ROOT, env=jobs.env() | {"SLURM_CONF": slurm.env["SLURM_CONF"]}, capture_output=True, text=True,
        timeout=120)
    job = re.search(r"submitted job (\d+)", jobs.ok(submit).stdout).group(1)
    samples, deadline = out / "cpt" / "samples" / "rank-00001.jsonl", time.monotonic() + 300
    while not (samples.exists() and len(samples.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and slurm.state(job) in ("PENDING", "RUNNING"), slurm.logs()
        time.sleep(0.2)
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    deadline = time.monotonic() + 120
    # The job is PENDING as soon as it is requeued, while its first batch shell may still be exiting; the
    # node turns idle only once every process of that run is gone and its epilog has finished.
    while slurm.job_info(job).get("Restarts") != "1" or slurm.state(job) != "PENDING" or slurm.node_state() != "idle":
        assert time.monotonic() < deadline, slurm.logs()
        time.sleep(0.2)
    # Slurm holds a requeued job for a while (BeginTime); a test need not wait for that policy. It must not
    # restart the job in the second it was requeued, though: slurmd compares the new run's credential time
    # with the old run's revocation time in whole seconds and refuses it ("Job credential revoked").
    time.sleep(2)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    state = slurm.wait(job, timeout_s=600)
    log = (out / "logs" / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", f"{state}\n{log[-4000:]}\n{slurm.job_info(job)}\n{slurm.logs()}"
    assert "stop signal: checkpointing, then requeueing" in log and "requeued (restart 1)" in log
    assert "preempted: [rank 0/2] cpt: stopped by the stop file" in log and "Connection lost" not in log
    assert slurm.job_info(job).get("Restarts") == "1"
    assert_one_complete_run(out, processes=2, interrupted_attempts=1)
    resumed = [p for p in out.glob(f"logs/slurm-{job}/node0/restart1/*/attempt_0/0/stderr.log")]
    assert resumed and "resuming from" in resumed[0].read_text()
