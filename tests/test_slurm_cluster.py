"""The single-host Slurm test cluster (tests/slurm_cluster.py) runs real jobs and cleans up.

Skipped where Slurm cannot be installed or started (not root, no apt-get);
failed instead under CPTIFT_REQUIRE_SLURM=1, which CI sets (see .ci/run).
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from tests.slurm_cluster import slurm, slurm_or_skip  # noqa: F401  (slurm: the pytest fixture)

TWO_RANKS = """\
#!/bin/bash
#SBATCH --job-name=cptift-smoke
#SBATCH --ntasks=2
#SBATCH --time=2
#SBATCH --output=job.out
set -euo pipefail
srun bash -c 'echo rank=$SLURM_PROCID host=$(hostname)'
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first run includes the apt-get install
def test_two_task_sbatch_job(slurm, tmp_path):  # noqa: F811
    script = tmp_path / "job.sbatch"
    script.write_text(TWO_RANKS)

    job_id = slurm.submit(script, cwd=tmp_path)
    state = slurm.wait(job_id, timeout_s=120)

    out = tmp_path / "job.out"
    text = out.read_text() if out.exists() else "(no job.out)"
    assert state == "COMPLETED", f"job {job_id} ended {state}:\n{text}\n{slurm.logs()}"
    host = socket.gethostname()  # what `hostname` prints in the job
    lines = sorted(line for line in text.splitlines() if line.startswith("rank="))
    assert lines == [f"rank=0 host={host}", f"rank=1 host={host}"], text


def _pids_with_marker(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and marker.encode() in (p / "cmdline").read_bytes():
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_exit_leaves_no_job_process(tmp_path):
    """A still-running job and a process a finished job detached (setsid) both end with the cluster."""
    marker = f"cptift-leftover-{uuid.uuid4().hex}"
    # `exec -a` names the sleep after the marker, so that /proc/*/cmdline finds it.
    (tmp_path / "detach.sh").write_text(f"#!/bin/bash\nsetsid bash -c 'exec -a {marker} sleep 1000' </dev/null >/dev/null 2>&1 &\n")
    (tmp_path / "long.sh").write_text(f"#!/bin/bash\nexec -a {marker} sleep 1000\n")
    with slurm_or_skip(tmp_path / "cluster") as cluster:
        assert cluster.wait(cluster.submit(tmp_path / "detach.sh", cwd=tmp_path), timeout_s=60) == "COMPLETED"
        long_job = cluster.submit(tmp_path / "long.sh", cwd=tmp_path)
        deadline = time.monotonic() + 60
        while len(_pids_with_marker(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_pids_with_marker(marker)) == 2, cluster.state(long_job)
    assert _pids_with_marker(marker) == []
    assert _pids_with_marker(str(cluster.conf_path)) == []  # slurmctld, slurmd and its wrapper
