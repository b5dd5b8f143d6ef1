"""A real, throw-away, single-host Slurm cluster for tests.

What: ``single_host_slurm(workdir)`` starts munged (unless one already
answers), ``slurmctld`` and ``slurmd`` on this machine with a private
``slurm.conf`` (one node, one ``debug`` partition, no accounting, no cgroups),
waits until the node is idle, and yields a ``SlurmCluster`` whose ``env`` points
``sbatch``/``srun``/``squeue``/``scontrol`` at it. On exit it cancels any job
still known to it and stops every process it started, by PID (SIGTERM, then
SIGKILL), including job steps left behind by slurmd.

Why: launchers (sbatch scripts, srun + torchrun rendezvous) are only really
tested by submitting them to a real Slurm; a mock would test our assumptions
about Slurm, not Slurm.

Needs: root (daemons run as SlurmUser=root, munged as the ``munge`` user, and
jobs run as root) and, the first time, ``apt-get`` on a Debian-like system:
``ensure_installed()`` installs ``slurmctld slurmd slurm-client munge``
(5-10 s, apt-get update included). Where either is missing the ``slurm``
fixture skips the test with the reason, or fails it when
``CPTIFT_REQUIRE_SLURM=1`` (CI sets it).

Use, from a test module::

    from tests.slurm_cluster import slurm  # noqa: F401  (pytest fixture)

    @pytest.mark.slow
    def test_launcher(slurm, tmp_path):
        job = slurm.submit(script, "arg", cwd=tmp_path, extra_sbatch_args=["--ntasks=2"])
        assert slurm.wait(job, timeout_s=120) == "COMPLETED"

or without pytest::

    with single_host_slurm(Path("/tmp/x"), cpus=2) as cluster:
        subprocess.run(["sinfo"], env=cluster.env)

or, for a test that needs its own cluster, ``with slurm_or_skip(tmp_path) as cluster:``.

The ``slurm`` fixture is module-scoped on purpose: a fixture function imported
into several test modules gets one fixture definition per module, so a
session scope would not share one cluster but keep several alive at once.
Clusters may overlap anyway (each picks free TCP ports), but they share the
system munged: the one that started it stops it, so the cluster that started
munged should be the last one to end (true of nested ``with`` blocks and of
a module fixture around a test's own cluster). A munged already running
before is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pytest

APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
REQUIRED_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "munged", "munge")
REQUIRE_ENV = "CPTIFT_REQUIRE_SLURM"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")

# JobState values after which a job never runs again.
TERMINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT",
}
# Inherited from an enclosing Slurm job (pytest run under sbatch), these would
# steer our sbatch/srun towards the outer cluster's job, partition, account...
_OUTER_SLURM_VARS = re.compile(r"^(SLURM|SBATCH|SRUN|SALLOC)_")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why."""


class SlurmError(RuntimeError):
    """A Slurm command failed on a running cluster."""


def _which(name: str) -> str | None:
    """The binary's path; also looks in the sbin dirs, which a non-login PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin")


def _missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if _which(b) is None]


def _tail(text: str | bytes, lines: int = 20) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_installed(timeout_s: float = 600) -> str | None:
    """None when Slurm and munge are installed (installing them as root with apt-get), else why not."""
    missing = _missing_binaries()
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed ({', '.join(missing)} missing) and installing it needs root"
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing)} missing) and there is no apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Wait for a dpkg lock held by someone else instead of failing at once.
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    update = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "update"]

    def run(cmd: list[str]) -> str | None:
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` took more than {timeout_s:.0f} s"
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed (exit {r.returncode}):\n{_tail(r.stderr or r.stdout)}"
        return None

    # Package lists may be absent (fresh container) or stale (404s): update once, then retry.
    first = run(install)
    if first:
        second = run(update) or run(install)
        if second:
            return f"{first}\nthen {second}"
    missing = _missing_binaries()
    if missing:
        return f"apt-get installed {' '.join(APT_PACKAGES)} but {', '.join(missing)} are still missing"
    return None


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (all held open at once so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _munge_answers() -> bool:
    try:
        return subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which("mungekey"):
        subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True, capture_output=True)
    else:
        MUNGE_KEY.write_bytes(os.urandom(1024))
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o400)


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _pids_with_env(entry: bytes) -> list[int]:
    """PIDs whose start-up environment holds ``entry`` (e.g. ``b"SLURM_CONF=/path"``)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if entry in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


def _kill_pids(pids: Sequence[int], grace_s: float = 5) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
            time.sleep(0.1)
        if not alive:
            return
        pids = alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True




SLURM_CONF_TEMPLATE = Path(__file__).with_name("slurm.conf.template")  # str.format fields: node, ports, dirs


@dataclass
class SlurmCluster:
    """A running single-host cluster: pass ``env`` to every Slurm client command."""

    workdir: Path
    conf_path: Path
    node: str
    env: dict[str, str]
    log_paths: list[Path] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout_s: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster."""
        result = subprocess.run(list(cmd), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
        if check and result.returncode != 0:
            raise SlurmError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): {result.stderr.strip()}")
        return result

    def submit(self, script_path: str | Path, *args: str, cwd: str | Path, extra_sbatch_args: Sequence[str] = ()) -> str:
        """``sbatch --parsable [extra] SCRIPT ARGS...`` from ``cwd``; returns the job id."""
        out = self.run("sbatch", "--parsable", *extra_sbatch_args, str(script_path), *map(str, args), cwd=Path(cwd)).stdout
        return out.strip().split(";")[0]

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, ExitCode, StdOut, WorkDir...); kept MinJobAge=300 s after the end."""
        out = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout.strip()
        # Values may hold spaces (Command, WorkDir): split only before "Key=".
        return dict(item.split("=", 1) for item in re.split(r" (?=[A-Za-z:/]+=)", out) if "=" in item)

    def state(self, job_id: str) -> str:
        return self.job_info(job_id).get("JobState", "UNKNOWN")

    def node_state(self) -> str:
        """The node's state as sinfo prints it (idle, allocated, completing...), "" if sinfo fails."""
        return self.run("sinfo", "--noheader", "--nodes", self.node, "--format", "%T", check=False, timeout_s=15).stdout.strip()

    def wait(self, job_id: str, timeout_s: float = 300, poll_s: float = 0.5) -> str:
        """Wait until the job ends; returns its JobState (COMPLETED, FAILED, CANCELLED, TIMEOUT...).

        Accounting is off (no sacct), so the state comes from ``scontrol show job``,
        which keeps finished jobs for MinJobAge seconds. On timeout the job is
        cancelled and TimeoutError raised.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state(job_id)
            if state in TERMINAL_STATES:
                return state
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id), check=False)
                raise TimeoutError(f"Slurm job {job_id} still {state} after {timeout_s:.0f} s\n{self.logs()}")
            time.sleep(poll_s)

    def logs(self, lines: int = 30) -> str:
        """The tails of the daemons' logs, for error messages."""
        parts = []
        for path in self.log_paths:
            text = path.read_text(errors="replace") if path.exists() else "(absent)"
            parts.append(f"--- {path.name} ---\n{_tail(text, lines)}")
        return "\n".join(parts)


@contextlib.contextmanager
def single_host_slurm(workdir: Path, cpus: int = 2, start_timeout_s: float = 60) -> Iterator[SlurmCluster]:
    """Start munged (if needed), slurmctld and slurmd; yield a SlurmCluster; stop them all on exit.

    Raises SlurmUnavailable (with the daemons' log tails) when they do not come up.
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("a test Slurm cluster needs root (SlurmUser=root, munged as munge)")
    missing = _missing_binaries()
    if missing:
        raise SlurmUnavailable(f"Slurm is not installed ({', '.join(missing)} missing); call ensure_installed()")

    workdir = Path(workdir).resolve()
    run_dir = workdir / "slurm"
    state_dir = run_dir / "state"
    spool_dir = run_dir / "spool"
    short_dir = None
    # slurmd puts per-step Unix sockets ("<node>_<job>.<step>") in its spool dir and a
    # Unix socket path holds at most 107 bytes: deep pytest tmp dirs get a short one.
    if len(str(spool_dir)) > 60:
        short_dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        spool_dir = short_dir / "spool"
    for d in (state_dir, spool_dir):  # a reused workdir must not bring back old jobs
        shutil.rmtree(d, ignore_errors=True)
    for d in (run_dir, state_dir, spool_dir):
        d.mkdir(parents=True, exist_ok=True)

    node = socket.gethostname().split(".")[0]
    conf_path = run_dir / "slurm.conf"
    ports = _free_ports(2)
    reaper = Path(__file__).with_name("slurm_subreaper.py")
    conf_path.write_text(SLURM_CONF_TEMPLATE.read_text().format(
        node=node, cpus=cpus, state=state_dir, spool=spool_dir, run=run_dir,
        ctld_port=ports[0], slurmd_port=ports[1],
    ))
    env = {k: v for k, v in os.environ.items() if not _OUTER_SLURM_VARS.match(k)}
    env["SLURM_CONF"] = str(conf_path)
    cluster = SlurmCluster(
        workdir=workdir, conf_path=conf_path, node=node, env=env,
        log_paths=[run_dir / "slurmctld.log", run_dir / "slurmctld.out", run_dir / "slurmd.log", run_dir / "slurmd.out"],
    )

    procs: list[tuple[str, subprocess.Popen]] = []  # (name, process) in start order
    try:
        if not _munge_answers():
            _ensure_munge_key()
            MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
            munge_out = run_dir / "munged.out"
            cluster.log_paths.insert(0, munge_out)
            # Foreground (-F), so that the PID we hold is munged's own; --force gets
            # past a stale socket left by a munged that was killed.
            with munge_out.open("wb") as out:
                procs.append(("munged", subprocess.Popen(
                    [_which("munged"), "-F", "--force"], user="munge", group="munge", extra_groups=[],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                )))
            deadline = time.monotonic() + 15
            while not _munge_answers():
                if procs[-1][1].poll() is not None or time.monotonic() > deadline:
                    raise SlurmUnavailable(f"munged did not start\n{cluster.logs()}")
                time.sleep(0.2)

        for name, cmd in (
            ("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(conf_path)]),
            ("slurmd", [sys.executable, str(reaper), _which("slurmd"), "-D", "-N", node, "-f", str(conf_path)]),
        ):
            with (run_dir / f"{name}.out").open("wb") as out:
                procs.append((name, subprocess.Popen(
                    cmd, env=env, cwd=run_dir,
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C to pytest must not kill them before teardown runs
                )))

        deadline = time.monotonic() + start_timeout_s
        while True:
            dead = [name for name, proc in procs if proc.poll() is not None]
            if dead:
                raise SlurmUnavailable(f"{', '.join(dead)} exited during start-up\n{cluster.logs()}")
            state = cluster.node_state()
            if state == "idle":
                break
            if time.monotonic() > deadline:
                raise SlurmUnavailable(
                    f"node {node} not idle after {start_timeout_s:.0f} s "
                    f"(sinfo: {state!r})\n{cluster.logs()}"
                )
            time.sleep(0.5)

        yield cluster
    finally:
        _teardown(cluster, procs)
        if short_dir is not None:
            shutil.rmtree(short_dir, ignore_errors=True)


def _teardown(cluster: SlurmCluster, procs: list[tuple[str, subprocess.Popen]]) -> None:
    if any(name == "slurmctld" and proc.poll() is None for name, proc in procs):
        # Cancel what is left so that slurmd ends the steps cleanly; give it a moment.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            jobs = cluster.run("squeue", "--noheader", "--format", "%i", check=False, timeout_s=15).stdout.split()
            if jobs:
                cluster.run("scancel", *jobs, check=False, timeout_s=15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and cluster.run("squeue", "--noheader", check=False, timeout_s=15).stdout.strip():
                    time.sleep(0.5)
    for name, proc in reversed(procs):
        if name != "munged":
            _stop(proc, grace_s=25)  # slurmd's wrapper takes up to 10 s to end its leftovers
    # Backstop for a wrapper that had to be killed: whatever still has our
    # SLURM_CONF in its environment (slurmstepd, job tasks) came from this cluster.
    _kill_pids(_pids_with_env(f"SLURM_CONF={cluster.conf_path}".encode()))
    for name, proc in procs:
        if name == "munged":  # last: slurmstepd may still talk to it while ending
            _stop(proc)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"Slurm is required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"Slurm unavailable: {reason}")


def require_slurm() -> None:
    """Install Slurm if needed; skip the calling test where impossible (fail under CPTIFT_REQUIRE_SLURM=1)."""
    if os.geteuid() != 0:
        _unavailable("needs root to install and run slurmctld, slurmd and munged")
    reason = ensure_installed()
    if reason:
        _unavailable(reason)


@contextlib.contextmanager
def slurm_or_skip(workdir: Path, cpus: int = 2) -> Iterator[SlurmCluster]:
    """``single_host_slurm`` for a test: skips (or fails) where Slurm cannot be installed or started."""
    require_slurm()
    try:
        with single_host_slurm(workdir, cpus=cpus) as cluster:
            yield cluster
    except SlurmUnavailable as exc:  # only raised while starting, once its daemons are stopped
        _unavailable(str(exc))


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running single-host cluster shared by one test module; see the module docstring."""
    with slurm_or_skip(tmp_path_factory.mktemp("slurm-cluster")) as cluster:
        yield cluster
