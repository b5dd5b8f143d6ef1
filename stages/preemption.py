"""Preemption: on SIGTERM or SIGUSR1, save a checkpoint, stop, and exit with ``EXIT_PREEMPTED``.

    preemption.install()                       # cptift run, before the pipeline starts
    callbacks = [preemption.StopOnSignal()]    # in every Trainer
    preemption.check_between_steps(step)       # the driver, before each step

Slurm sends a signal before a job's time limit when asked (``#SBATCH
--signal=B:USR1@300`` in ``launch/slurm.sbatch``: the batch shell then touches
``$CPTIFT_STOP_FILE``, which every rank watches, and requeues the job once
they have stopped); a scheduler that preempts sends SIGTERM. The handler only
records the signal. At the end of the current optimizer
step every rank agrees (a max over ranks, so one rank's signal stops all),
the Trainer saves a checkpoint (marked complete, ``stages.checkpoints``) and
stops, and ``cptift run`` exits with 75 (EX_TEMPFAIL: try again). Running the
same command again resumes from that checkpoint. Outside training the signal
stops the pipeline before its next step; the step under way finishes first.
"""

from __future__ import annotations

import os
import signal
import threading

from transformers import TrainerCallback

from stages import distributed

EXIT_PREEMPTED = 75
# A file whose appearance stops the run like a signal: launch/slurm.sbatch touches it, because a signal
# sent to a job step reaches every process in it (torchrun, W&B's service) and not only the ranks.
STOP_FILE_ENV = "CPTIFT_STOP_FILE"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[int] = []


class Preempted(Exception):
    """The job was told to stop; a checkpoint (or a finished step) is the place to continue from."""


def _record(signum, frame) -> None:
    _received.append(signum)


def install() -> None:
    """Record SIGTERM / SIGUSR1 instead of dying (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _record)


def _stop_file() -> str | None:
    path = os.environ.get(STOP_FILE_ENV)
    return path if path and os.path.exists(path) else None


def requested() -> str | None:
    """What asked this process to stop (a signal's name, or the stop file), or None."""
    if _received:
        return signal.Signals(_received[0]).name
    return f"the stop file {_stop_file()}" if _stop_file() else None


def _agreed() -> bool:
    """Whether any rank was asked to stop (every rank must call this at the same point)."""
    world = distributed.current()
    mine = 1 if requested() else 0
    return bool(world.all_max(mine)) if world.is_multi else bool(mine)


def check_between_steps(step: str) -> None:
    if _agreed():
        raise Preempted(f"stopped by {requested() or 'a signal on another rank'} before {step}; "
                        f"run the same command again to continue")


class StopOnSignal(TrainerCallback):
    """At the end of an optimizer step, if any rank was signalled: save, stop, and remember it."""

    def __init__(self) -> None:
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if _agreed():
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control
