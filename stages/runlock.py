"""One run per directory at a time: ``<output_dir>/run.lock`` names the holder.

    lock = RunLock(Path("runs/demo")).acquire()   # rank 0 only; raises RunLocked if a live run holds it
    ...                                           # released when the process exits (or lock.release())

A second ``cptift run`` on a directory a live run holds is refused with the
holder's host and PID, so two jobs never write the same checkpoints (someone
submitted the job twice). A lock left by a dead run on this host (its PID is
gone, or reused by another program) is taken over. A lock from another host
cannot be checked from here: it is refused (unless it was taken by an
earlier run of the same, requeued, Slurm job), and the message says how to
remove it if that job is known to be dead.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from stages.config import ConfigError

LOCK_NAME = "run.lock"


class RunLocked(ConfigError):
    """Another live run holds the run directory."""


def _alive(pid: int, started: float) -> bool:
    """Whether ``pid`` is still the process that took the lock (not a later one that reuses the number)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():  # Linux: a process started after the lock was written is not its holder
        boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
        ticks = int(stat.read_text().rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK") <= started + 1
    return True


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                   "slurm_job": os.environ.get("SLURM_JOB_ID")}

    def acquire(self) -> RunLock:
        """Take the lock; it is released by ``release`` or when this process exits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self.me, fh)
            atexit.register(self.release)
            return self

    def _take_over_or_refuse(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}  # written by a run killed mid-write: nobody can hold it
        mine = holder.get("host") == self.me["host"]
        if mine and holder.get("pid") == self.me["pid"]:
            holder = {}  # this process already holds it (one command after another in one interpreter)
        elif self.me["slurm_job"] and holder.get("slurm_job") == self.me["slurm_job"]:
            holder = {}  # an earlier run of this same Slurm job, requeued (maybe onto another node)
        if holder and (not mine or _alive(int(holder["pid"]), float(holder["started"]))):
            where = f"host {holder['host']}, PID {holder['pid']}, since " + \
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
            hint = "wait for it or stop it" if mine else f"if that job is dead, delete {self.path}"
            raise RunLocked(f"{self.path.parent} is in use by another run ({where}); {hint}, "
                            f"or set run.output_dir to another directory")
        self.path.unlink(missing_ok=True)  # a stale lock from a dead run on this host

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.me["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
