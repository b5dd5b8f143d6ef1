"""Run slurmd (argv[1:]) as a child under PR_SET_CHILD_SUBREAPER; used by tests/slurm_cluster.py.

Runs slurmd as its child under PR_SET_CHILD_SUBREAPER: slurmstepd daemonizes
(double fork) and would be re-parented to PID 1, which may reap it late (zombies
seen for seconds here) and puts job processes out of our reach. Under this
wrapper they stay its descendants: it reaps them as they end, forwards
SIGTERM/SIGINT to slurmd, and once slurmd has exited ends (TERM, then KILL)
and reaps whatever slurmd left behind.
"""
import ctypes
import os
import signal
import sys
import time

if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
main = os.fork()
if main == 0:
    os.execv(sys.argv[1], sys.argv[1:])

def forward(sig, frame):
    try:
        os.kill(main, sig)
    except ProcessLookupError:
        pass

signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
status = 1
while True:
    try:
        pid, st = os.wait()
    except ChildProcessError:
        break
    if pid == main:
        status = os.waitstatus_to_exitcode(st)
        break

def children():
    me, kids = str(os.getpid()), []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/stat") as f:
                if p.isdigit() and f.read().rsplit(")", 1)[1].split()[1] == me:
                    kids.append(int(p))
        except (OSError, IndexError):
            pass
    return kids

for sig in (signal.SIGTERM, signal.SIGKILL):
    signalled, deadline = set(), time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            sys.exit(status)
        for pid in set(children()) - signalled:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            signalled.add(pid)
        time.sleep(0.1)
sys.exit(status)
