"""cptift launch on real launchers: torchrun on one node, two loopback "nodes" through a c10d
rendezvous and through the DeepSpeed launcher's --no_ssh form, and a rank killed mid-CPT.

Each job is the whole tiny pipeline on 2 gloo processes; the checks read what
the job left in its run directory and its per-rank logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests import jobs

STEPS = ["prepare", "eval_base", "cpt", "eval_cpt", "ift", "eval_ift", "report", "export"]
LAUNCH = [str(jobs.BIN / "cptift"), "launch", "configs/tiny.yaml"]


def assert_one_complete_run(out: Path, processes: int, interrupted_attempts: int = 0) -> None:
    """Every step's marker, one report, one export, and W&B runs from rank 0 only.

    An interrupted attempt of a step (preemption, then resume) keeps its own offline W&B run.
    """
    for step in STEPS:
        marker = json.loads((out / "steps" / f"{step}.json").read_text())
        assert marker["step"] == step and marker["processes"] == processes, marker
    assert sorted(p.name for p in (out / "steps").iterdir()) == sorted(f"{s}.json" for s in STEPS)
    report = json.loads((out / "report" / "forgetting.json").read_text())
    assert report["checkpoints"] == ["base", "cpt", "ift"] and report["metrics"]
    for name in ["model.safetensors", "config.json", "tokenizer.json", "README.md"]:
        assert (out / "export" / name).is_file(), name
    assert json.loads((out / "lineage.json").read_text())["ift"]["from"] == "cpt"
    runs = sorted((out / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 7 + interrupted_attempts, \
        f"one W&B run per step from rank 0 (eval x3, cpt, ift, report, export): {runs}"


# ---------------------------------------------------------------- fast: what launch renders


def test_multi_node_torchrun_dry_run_prints_one_command_per_node(capsys):
    from stages.cli import main

    assert main(["launch", "configs/tiny.yaml", "cpt.max_steps=3", "--executor", "torchrun", "--nodes", "2",
                 "--gpus-per-node", "8", "--master-addr", "node0:29400", "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "torchrun.sh" in ln]
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert f"NODE_RANK={rank}" in line and "NNODES=2" in line and "NPROC_PER_NODE=8" in line
        assert "RDZV_ENDPOINT=node0:29400" in line and line.endswith("configs/tiny.yaml cpt.max_steps=3")


def test_deepspeed_dry_run_renders_the_no_ssh_form_per_node(capsys, tmp_path):
    from stages.cli import main

    hostfile = tmp_path / "hosts"
    hostfile.write_text("node0 slots=8\nnode1 slots=8\n")
    assert main(["launch", "configs/tiny.yaml", "--executor", "deepspeed", "--nodes", "2", "--gpus-per-node", "8",
                 "--hostfile", str(hostfile), "--master-addr", "node0", "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "deepspeed.sh" in ln]
    assert [("NO_SSH=1" in ln, f"NODE_RANK={r}" in ln) for r, ln in enumerate(lines)] == [(True, True)] * 2
    assert all(f"HOSTFILE={hostfile}" in ln and "MASTER_ADDR=node0" in ln for ln in lines)


def test_slurm_dry_run_renders_the_sbatch_header(capsys, tmp_path):
    from stages.cli import main

    out = tmp_path / "run"
    assert main(["launch", "configs/tiny.yaml", f"run.output_dir={out}", "--executor", "slurm", "--nodes", "4",
                 "--gpus-per-node", "8", "--dry-run"]) == 0
    text = (out / "launch" / "slurm.sbatch").read_text()
    for line in ["#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=tiny", f"#SBATCH --output={out.resolve()}/logs/slurm-%j.out"]:
        assert line in text.splitlines(), line
    assert "--rdzv-backend c10d" in text and "srun --kill-on-bad-exit=1" in text
    assert f"configs/tiny.yaml run.output_dir={out}" in capsys.readouterr().out


def test_launch_rejects_a_bad_config_before_starting_anything(capsys):
    from stages.cli import main

    assert main(["launch", "configs/tiny.yaml", "cpt.max_stepz=3", "--executor", "torchrun", "--dry-run"]) == 2
    err = capsys.readouterr()
    assert "unknown key 'max_stepz'; did you mean 'max_steps'" in err.err and "torchrun.sh" not in err.out


# ---------------------------------------------------------------- slow: real jobs


@pytest.mark.slow
def test_launch_torchrun_runs_the_whole_pipeline_once(tmp_path, isolated_cache):
    out = tmp_path / "run"
    proc = jobs.ok(jobs.subprocess.run([*LAUNCH, f"run.output_dir={out}", "--executor", "torchrun", "--nodes", "1",
                                        "--gpus-per-node", "2"], cwd=jobs.ROOT, env=jobs.env(),
                                       capture_output=True, text=True, timeout=600))
    assert_one_complete_run(out, processes=2)
    logs = {int(p.parent.name): p.read_text() for p in out.glob("logs/torchrun/node0/*/attempt_0/*/stdout.log")}
    assert sorted(logs) == [0, 1], "every rank's log is kept"
    assert logs[0].count("[done]") == len(STEPS) and "[step]" not in logs[1]
    assert "report:" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["torchrun", "deepspeed"])
def test_two_nodes_on_loopback_run_the_pipeline(executor, tmp_path, isolated_cache):
    out, port = tmp_path / "run", jobs.free_port()
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    extra = ["--hostfile", str(hostfile)] if executor == "deepspeed" else []
    nodes = [jobs.start([*LAUNCH, f"run.output_dir={out}", "--executor", executor, "--nodes", "2",
                         "--gpus-per-node", "1", "--node-rank", str(k), "--master-addr", f"127.0.0.1:{port}",
                         *extra], tmp_path / f"node{k}.log") for k in (0, 1)]
    codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], "\n".join((tmp_path / f"node{k}.log").read_text()[-3000:] for k in (0, 1))
    assert_one_complete_run(out, processes=2)


def _digests(out: Path, paths: list[str]) -> dict[str, str]:
    return {p: hashlib.sha256((out / p).read_bytes()).hexdigest() for p in paths}


@pytest.mark.slow
def test_killing_one_rank_during_cpt_ends_the_job_within_60_s(tmp_path, isolated_cache):
    out = tmp_path / "run"
    job = jobs.start([*LAUNCH, f"run.output_dir={out}", "cpt.max_steps=2000", "cpt.save_steps=1000",
                      "--executor", "torchrun", "--nodes", "1", "--gpus-per-node", "2"], tmp_path / "job.log")
    samples = out / "cpt" / "samples" / "rank-00001.jsonl"
    deadline = time.time() + 300
    while not (samples.exists() and len(samples.read_text().splitlines()) >= 3):
        assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.2)
    finished = ["steps/prepare.json", "steps/eval_base.json", "base/eval.json", "data/manifest.json",
                "data/report.json", "data/ift_train.jsonl", "config.yaml"]
    before = _digests(out, finished)
    victims = jobs.rank_pids(job.pid, rank=1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    killed_at = time.time()
    code = job.wait(timeout=120)
    elapsed = time.time() - killed_at
    log = (tmp_path / "job.log").read_text()
    assert code != 0 and elapsed < 60, f"exit {code} after {elapsed:.1f} s"
    assert "Signal 9 (SIGKILL)" in log or "exitcode  : -9" in log, log[-3000:]  # torchrun names the dead rank
    assert _digests(out, finished) == before, "a finished step's output changed"
    assert not (out / "steps" / "cpt.json").exists() and not (out / "cpt" / "final").exists()
    assert not jobs.rank_pids(job.pid, rank=0)


@pytest.mark.slow
def test_an_error_on_rank_0_alone_ends_every_rank_with_its_message(tmp_path, isolated_cache):
    """Rank 0 fails preparing bad data while rank 1 waits at the barrier: no hang, rank 0's error shown."""
    domain = tmp_path / "docs.jsonl"
    domain.write_text(json.dumps({"text": "x" * 300}) + "\n" + json.dumps({"body": "y" * 300}) + "\n")
    started = time.time()
    proc = jobs.torchrun(2, "run", "configs/tiny.yaml", f"run.output_dir={tmp_path / 'run'}",
                         f"data.domain.sources=[{domain}]", "tracking.wandb.mode=disabled", timeout=120)
    assert proc.returncode != 0 and time.time() - started < 60
    out = proc.stdout + proc.stderr
    assert "error: [rank 0/2] 1 of 2 inputs are unreadable" in out and f"{domain}:2: field 'text' missing" in out
    # torchrun's summary names rank 0's own error as the root cause, read from its error file.
    summary = out[out.rindex("Root Cause"):]
    assert "rank      : 0" in summary and "DataError" in summary and "field 'text' missing" in summary
