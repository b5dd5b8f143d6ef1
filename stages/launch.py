"""``cptift launch``: render a launcher from ``launch/``, print it, then run or submit it.

    cptift launch configs/tiny.yaml --executor torchrun --nodes 1 --gpus-per-node 2
    cptift launch CONFIG --executor torchrun --nodes 2 --gpus-per-node 8 --node-rank 0 --master-addr node0:29500
    cptift launch CONFIG --executor slurm --nodes 4 --gpus-per-node 8          # writes and sbatch-es a copy
    cptift launch CONFIG --executor deepspeed --nodes 2 --gpus-per-node 8 --hostfile hosts --node-rank 1 \\
        --master-addr node0
    cptift launch ... --dry-run                                                 # print, run nothing

The scripts in ``launch/`` stay the source of truth: this module only sets
their environment variables (torchrun, DeepSpeed) or their ``#SBATCH`` header
(Slurm) and passes the config and overrides through. The config is validated
first, so a typo fails here and not on 64 GPUs an hour later. Without GPUs,
``--gpus-per-node`` is the number of processes per node. Per-rank logs go to
``<output_dir>/logs/``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stages.config import ConfigError, PipelineConfig

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "launch"
EXECUTORS = ("torchrun", "slurm", "deepspeed")
DEFAULT_PORT = 29500


@dataclass
class Request:
    config: str
    overrides: list[str]
    executor: str
    nodes: int = 1
    gpus_per_node: int = 1  # processes per node where there are no GPUs
    node_rank: int | None = None  # this node's part of a multi-node torchrun / --no_ssh DeepSpeed job
    master_addr: str = ""  # host or host:port of node 0
    hostfile: str = ""
    dry_run: bool = False


@dataclass
class Command:
    """One command line to run (or several, one per node, to print)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.quote(a) for a in self.argv])


def script(name: str) -> Path:
    path = LAUNCH_DIR / name
    if not path.is_file():
        raise ConfigError(f"{path} not found: cptift launch needs the launch/ folder of a cptift checkout")
    return path


def cptift_executable() -> str:
    """The cptift of this interpreter's environment, so ranks run the same install."""
    beside = Path(sys.executable).with_name("cptift")
    return str(beside) if beside.exists() else (shutil.which("cptift") or "cptift")


def env_path() -> str:
    """PATH with this interpreter's bin/ first: torchrun and deepspeed of the same venv, activated or not."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = (addr or "127.0.0.1").partition(":")
    return host, int(port or DEFAULT_PORT)


def _check(req: Request) -> None:
    if req.nodes < 1 or req.gpus_per_node < 1:
        raise ConfigError("--nodes and --gpus-per-node must be at least 1")
    if req.node_rank is not None and not 0 <= req.node_rank < req.nodes:
        raise ConfigError(f"--node-rank {req.node_rank} must be in [0, {req.nodes})")
    if req.nodes > 1 and req.executor != "slurm" and req.node_rank is not None and not req.master_addr:
        raise ConfigError("--master-addr (node 0's host[:port]) is required with --node-rank")


def torchrun_commands(req: Request, cfg: PipelineConfig) -> list[Command]:
    """One command per node (just this node's when --node-rank is given)."""
    host, port = _split_addr(req.master_addr)
    ranks = range(req.nodes) if req.node_rank is None else [req.node_rank]
    return [Command(["bash", str(script("torchrun.sh")), req.config, *req.overrides], {
        "NNODES": str(req.nodes), "NODE_RANK": str(rank), "NPROC_PER_NODE": str(req.gpus_per_node),
        "RDZV_ENDPOINT": f"{host}:{port}", "RDZV_ID": cfg.run.name,
        "LOG_DIR": str(Path(cfg.run.output_dir) / "logs" / "torchrun" / f"node{rank}"),
        "CPTIFT": cptift_executable()}) for rank in ranks]


def deepspeed_commands(req: Request, cfg: PipelineConfig) -> list[Command]:
    host, port = _split_addr(req.master_addr)
    hostfile = req.hostfile or str(_write_local_hostfile(req, cfg))
    env = {"HOSTFILE": hostfile, "MASTER_ADDR": host, "MASTER_PORT": str(port),
           "LOG_DIR": str(Path(cfg.run.output_dir) / "logs" / "deepspeed"), "CPTIFT": cptift_executable()}
    argv = ["bash", str(script("deepspeed.sh")), req.config, *req.overrides]
    if req.nodes == 1 or (req.node_rank is None and not req.master_addr):
        return [Command(argv, env)]  # one node, or ssh from the first node to the rest
    ranks = range(req.nodes) if req.node_rank is None else [req.node_rank]
    return [Command(argv, env | {"NO_SSH": "1", "NODE_RANK": str(r)}) for r in ranks]


def _write_local_hostfile(req: Request, cfg: PipelineConfig) -> Path:
    if req.nodes > 1:
        raise ConfigError("--executor deepspeed with --nodes > 1 needs --hostfile (one 'host slots=N' line per node)")
    path = Path(cfg.run.output_dir) / "launch" / "hostfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"localhost slots={req.gpus_per_node}\n")
    return path


def render_sbatch(req: Request, cfg: PipelineConfig, cluster_has_gpus: bool) -> str:
    """launch/slurm.sbatch with its #SBATCH header set for this request."""
    text = script("slurm.sbatch").read_text()
    logs = Path(cfg.run.output_dir).resolve() / "logs"
    values = {"job-name": cfg.run.name, "nodes": str(req.nodes), "ntasks-per-node": "1",
              "output": str(logs / "slurm-%j.out"), "gpus-per-node": str(req.gpus_per_node)}
    for key, value in values.items():
        text = re.sub(rf"^#SBATCH --{key}=.*$", f"#SBATCH --{key}={value}", text, count=1, flags=re.M)
    if not cluster_has_gpus:
        # No GPU resources in this cluster: ask for none and run that many processes per node.
        text = re.sub(r"^#SBATCH --gpus-per-node=.*$", "", text, count=1, flags=re.M)
        text = re.sub(r"^#SBATCH --cpus-per-task=.*$", f"#SBATCH --cpus-per-task={req.gpus_per_node}",
                      text, count=1, flags=re.M)
        text = text.replace("\nset -euo pipefail\n",
                            f"\nset -euo pipefail\nexport CPTIFT_NPROC_PER_NODE={req.gpus_per_node}\n", 1)
    venv = shlex.quote(str(Path(sys.executable).parent))
    text = text.replace("\nset -euo pipefail\n", f"\nset -euo pipefail\nexport CPTIFT_LOG_DIR={shlex.quote(str(logs))}\n"
                        f"export PATH={venv}:$PATH  # the venv cptift launch ran from\n", 1)
    return text


def slurm_has_gpus() -> bool:
    """Whether the cluster's nodes offer GPUs (gres), from sinfo; False where it lists none."""
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=60)
    return "gpu" in out.stdout


def submit_slurm(req: Request, cfg: PipelineConfig) -> int:
    if shutil.which("sbatch") is None and not req.dry_run:
        raise ConfigError("sbatch not found: run cptift launch --executor slurm on a Slurm login node")
    # A dry run asks no controller (there may be none here) and renders the GPU form.
    text = render_sbatch(req, cfg, req.dry_run or slurm_has_gpus())
    path = Path(cfg.run.output_dir) / "launch" / "slurm.sbatch"
    path.parent.mkdir(parents=True, exist_ok=True)
    (Path(cfg.run.output_dir) / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    path.write_text(text)
    cmd = Command(["sbatch", "--parsable", str(path), req.config, *req.overrides])
    print(f"# {path}\n{text}\n{cmd.shell()}", flush=True)
    if req.dry_run:
        return 0
    proc = subprocess.run(cmd.argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"sbatch failed: {proc.stderr.strip()}")
    job = proc.stdout.strip().split(";")[0]
    print(f"submitted job {job}; log: {Path(cfg.run.output_dir).resolve() / 'logs' / f'slurm-{job}.out'}")
    return 0


def run_local(req: Request, commands: list[Command]) -> int:
    for cmd in commands:
        print(cmd.shell(), flush=True)
    if req.dry_run:
        return 0
    if len(commands) > 1:
        print(f"# a {req.nodes}-node job: run each line above on its node, or pass --node-rank K here")
        return 0
    env = os.environ | commands[0].env | {"PATH": env_path()}
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // req.gpus_per_node)))
    return subprocess.run(commands[0].argv, env=env).returncode


def launch(req: Request, cfg: PipelineConfig) -> int:
    _check(req)
    if req.executor == "slurm":
        return submit_slurm(req, cfg)
    build = torchrun_commands if req.executor == "torchrun" else deepspeed_commands
    return run_local(req, build(req, cfg))
