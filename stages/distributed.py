"""Which process am I, and the few collectives the pipeline needs: the one place for rank logic.

    world = distributed.init(timeout_minutes=30)   # reads torchrun / DeepSpeed-launcher env
    if world.is_writer:
        write_marker()
    world.barrier()
    rows = world.gather(my_rows)                     # every rank's list, in rank order

Launchers (torchrun, the DeepSpeed launcher, srun starting torchrun) set
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
A plain ``python`` or ``cptift`` process becomes rank 0 of a world of 1, with a
free loopback port, because DeepSpeed wants a process group even then.

Failures never hang: the process group has a timeout (``run.collective_timeout_minutes``),
gloo raises as soon as a peer's socket closes (measured: under a second after a
SIGKILL), and torchrun / srun ``--kill-on-bad-exit`` / the DeepSpeed launcher
stop the other ranks of a failed one. On GPUs the backend is NCCL; everything
CUDA-specific is in ``_init_cuda`` (not exercised on CPU CI).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import logging
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes markers, reports, exports, lineage and W&B runs, each once."""
        return self.rank == 0

    @property
    def is_multi(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.is_multi:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order, on every rank."""
        if not self.is_multi:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank: one decision (e.g. "skip this step") for all."""
        if not self.is_multi:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_max(self, value: int) -> int:
        """The largest ``value`` over ranks: ranks that must step in lockstep agree on a count."""
        return max(self.gather(value))

    def label(self) -> str:
        return f"[rank {self.rank}/{self.size}] " if self.is_multi else ""


def current() -> World:
    """This process's place in the job, from the launcher's environment."""
    return World(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 size=int(os.environ.get("WORLD_SIZE", 1)))


def init(timeout_minutes: float = 30) -> World:
    """Join (or, alone, create) the process group; idempotent."""
    _single_process_env()
    _skip_shm_build()
    world = current()
    if world.is_multi and not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            backend = _init_cuda(world)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        log.debug("joined %s process group as rank %d of %d", backend, world.rank, world.size)
    return world


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _single_process_env() -> None:
    """Make a plain process look like rank 0 of 1, as torchrun would."""
    if "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _skip_shm_build() -> None:
    if not torch.cuda.is_available():
        # On CPU DeepSpeed JIT-compiles a shared-memory all-reduce op with g++
        # at init (about 40 s, and a failure without a compiler). gloo does the
        # same collectives; skipping the build gave identical losses.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _init_cuda(world: World) -> str:
    """GPU only: pin this rank to its device before NCCL starts."""
    torch.cuda.set_device(world.local_rank)
    return "nccl"


def device() -> torch.device:
    """Where this rank computes: its GPU, or the CPU."""
    return torch.device("cuda", current().local_rank) if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def rng_preserved() -> Iterator[None]:
    """Leave the python, numpy, torch CPU and this rank's CUDA generators as they were.

    For work that draws from them but must not change what training draws next: the Trainer's
    held-out evaluation (each DataLoader iterator seeds itself from the torch generator, which
    checkpoints save and dropout uses) and lm-eval, which reseeds everything. Only this rank's
    CUDA device: ``fork_rng``'s default would open a context on every GPU of the node from every rank.
    """
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def shard_batches(batches: list, world: World) -> tuple[list[int], int]:
    """Indices of the batches this rank computes, and how many batches every rank must run.

    Whole batches are dealt round-robin (rank r takes r, r+N, ...), so each
    batch is exactly the batch one process would have run: same padding, same
    shapes, same numbers. The second value is the longest share, which ranks
    holding partitioned (ZeRO-3) parameters must all reach, since every forward
    pass needs every rank.
    """
    mine = list(range(world.rank, len(batches), world.size))
    longest = -(-len(batches) // world.size)
    return mine, longest
