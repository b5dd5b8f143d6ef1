"""Start real multi-process cptift jobs from tests: torchrun, the DeepSpeed launcher, cptift launch.

Nothing here is mocked: the jobs are real processes talking gloo over loopback,
each a full DeepSpeed rank. The helpers only build command lines, find free
ports and read back what the ranks wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT_S = 600
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env() -> dict[str, str]:
    """The test environment for a job: offline W&B, the venv's tools first on PATH, 1 thread per rank."""
    # Launcher variables that an in-process test (main() or TrainingArguments) left in os.environ
    # would make every job think it is rank 0 of 1 on the test process's own port.
    inherited = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    return inherited | {"WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                         "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cptift(*args: str, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """One plain process: rank 0 of a world of 1."""
    return subprocess.run([str(BIN / "cptift"), *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def torchrun(nproc: int, *args: str, timeout: int = TIMEOUT_S,
             program: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N cptift ARGS`` on this machine (or ``program ARGS``)."""
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "--no-python",
           *(program or (str(BIN / "cptift"),)), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """A background job whose output goes to ``log``: for jobs that run side by side (two nodes)."""
    fh = log.open("w")
    return subprocess.Popen(args, cwd=ROOT, env=env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def weights(folder: Path) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def max_weight_diff(a: dict, b: dict) -> float:
    """Largest absolute difference over the tensors both hold (ZeRO-3 saves a tied lm_head once)."""
    shared = set(a) & set(b)
    assert shared >= {k for k in a if k != "lm_head.weight"}, set(a) ^ set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in shared)


def sample_log(stage_dir: Path, rank: int) -> list[dict]:
    path = Path(stage_dir) / "samples" / f"rank-{rank:05d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def logged_losses(run_dir: Path, checkpoint: str = "checkpoint-12") -> list[tuple[int, float]]:
    """(step, loss) as Trainer logged them, from the CPT checkpoint's trainer_state.json."""
    state = json.loads((Path(run_dir) / "cpt" / "checkpoints" / checkpoint / "trainer_state.json").read_text())
    return [(e["step"], e["loss"]) for e in state["log_history"] if "loss" in e]


def eval_metrics(run_dir: Path, checkpoint: str) -> dict[tuple[str, str], dict]:
    result = json.loads((Path(run_dir) / checkpoint / "eval.json").read_text())
    return {(m["suite"], m["name"]): m for m in result["metrics"]}


def rank_pids(parent: int, rank: int) -> list[int]:
    """PIDs of the processes below ``parent`` whose environment says RANK=<rank>."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            stat_env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        except OSError:
            continue
        if stat_env.get(b"RANK") == str(rank).encode() and _descends_from(int(proc.name), parent):
            pids.append(int(proc.name))
    return pids


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


@contextlib.contextmanager
def rank_zero_of_one():
    """This process as rank 0 of a world of 1, as train_stage sets it up (a gloo group on CPU)."""
    from accelerate.state import PartialState

    from stages import distributed

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())}.items():
            mp.setenv(key, value)
        distributed.init()
        try:
            yield
        finally:
            PartialState._reset_state()
            distributed.shutdown()
