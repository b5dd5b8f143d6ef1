"""Checkpoints that are always usable: a completeness marker, and resume from the newest complete one.

    callbacks = [CompleteMarker()]                               # passed to the Trainer
    resume = newest_complete(stage_dir / "checkpoints")          # None: start from scratch

``transformers.Trainer`` writes ``checkpoint-N/`` in place, one file after the
other and, under DeepSpeed, one shard per rank. A job killed during that write
leaves a folder that its own ``get_last_checkpoint`` would pick and then fail
to load (or load half of). After every rank has finished writing, rank 0 adds
``checkpoint-N/complete.json``; resume takes the newest folder that has it and
never one without. Incomplete folders are left for inspection and are
overwritten when training reaches their step again.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from transformers import TrainerCallback

from corpora.manifest import write_json_atomic
from stages import distributed

MARKER = "complete.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def newest_complete(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` under ``folder`` that every rank finished writing."""
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir()
            if (m := _STEP.match(p.name)) and (p / MARKER).is_file()]
    return str(max(done)[1]) if done else None


def incomplete(folder: Path) -> list[str]:
    """Checkpoint folders without the marker (a save that was interrupted), for the log."""
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if _STEP.match(p.name) and not (p / MARKER).is_file())


class CompleteMarker(TrainerCallback):
    """After the Trainer's save returns on every rank, rank 0 marks the checkpoint complete."""

    def on_save(self, args, state, control, **kwargs):
        world = distributed.current()
        world.barrier()  # every rank has written its shards and states
        if world.is_writer:
            write_json_atomic(Path(args.output_dir) / f"checkpoint-{state.global_step}" / MARKER,
                              {"step": state.global_step, "ranks": world.size,
                               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        world.barrier()  # no rank goes on (or is killed) believing in a marker not yet written
        return control
