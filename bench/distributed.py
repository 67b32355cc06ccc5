"""One run trained by several processes with ``torch.distributed`` DistributedDataParallel.

A run whose ``train.world_size`` is N > 1 trains in N processes (ranks), one per GPU (NCCL,
rank r on ``cuda:local_rank``) or N CPU processes (gloo, how the tests run it). What makes the
N copies one run:

- **Data.** ``train.batch_size`` is the global batch. Every rank draws the same epoch order
  and augmentation from the same (seed, epoch) generator and keeps its contiguous part of
  each batch (``bench.data.base.shard_part``): the union over ranks of a step's samples is
  exactly the one-process batch. A file dataset loads only the rank's own examples (each
  seeded by its index, as in one process). Each rank's loss is scaled by its share of the
  batch (``shard_weight``), so DDP's gradient average is the mean over the global batch even
  for a short last batch.
- **Identical state.** DDP averages the gradients inside ``loss.backward()``, before the
  method's ``after_backward`` hook reads them (``bench.train.train_step``), so every rank
  rewires from the same all-reduced gradient, with a method generator seeded identically.
  Setup scoring (SNIP, GraSP, K-FAC) reads the same setup batches on every rank, and wrapping
  the model in DDP broadcasts rank 0's parameters and buffers (masks included) once more.
  Batch norm statistics are each rank's shard's unless ``train.sync_batchnorm`` (CUDA only);
  DDP broadcasts rank 0's running statistics before every forward, so rank 0's are the model's.
- **Files.** Rank 0 alone writes (checkpoint, metrics, log, progress, ``model.pt``,
  ``result.json``) and evaluates the full test set; the other ranks read the checkpoint on
  resume and nothing else of the run folder.
- **Stopping.** A stop request (a signal) on any rank is agreed on by an all-reduce every
  ``STOP_POLL_STEPS`` steps and at every epoch end, so all ranks checkpoint (rank 0 writes)
  at the same step. Polling every step would cost a host-device synchronisation per step on
  GPUs; a preempted run loses at most that many steps of wall time, never correctness.

The world size is part of the run's identity (``bench.config.TrainConfig.world_size``): a
resume happens at the same world size only (the checkpoint belongs to the run id).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from bench import locks
from bench.data.base import shard_part

T = TypeVar("T")

# Steps between two all-reduces of the ranks' stop requests.
STOP_POLL_STEPS = 10

# The variables a rank process reads (torchrun's names).
ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Rank:
    """This process's place in the run's process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def writes(self) -> bool:
        """Rank 0 writes the run's files."""
        return self.rank == 0


def group(world_size: int) -> Rank | None:
    """The process group a run of `world_size` trains in: None at world size 1; else the
    initialised default group, which must have that size. Raises RuntimeError otherwise (a
    world-size-N run started outside ``bench.launch.ddp``, ``torchrun`` or a SLURM task)."""
    if world_size == 1:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"a run with train.world_size = {world_size} trains in "
                           f"{world_size} processes, but this process is in no process group")
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"a run with train.world_size = {world_size} is in a process group "
                           f"of {dist.get_world_size()}")
    return Rank(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: Rank | None) -> torch.device:
    """A rank's device: ``cuda:local_rank`` for a CUDA run, else `device`."""
    if rank is None or device.type != "cuda":
        return device
    return torch.device("cuda", rank.local_rank)


def init_from_env(device_name: str) -> Rank:
    """Join the process group described by ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
    ``WORLD_SIZE`` (and ``LOCAL_RANK``): NCCL for a CUDA run, gloo otherwise."""
    from bench.train import resolve_device

    device = resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend(device), rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))
    return Rank(dist.get_rank(), dist.get_world_size(), local_rank)


def free_port() -> int:
    """A TCP port free on this host now, for the rendezvous of a local multi-process run."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shard(x: torch.Tensor, y: torch.Tensor, rank: Rank) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s part of the batch (x, y) (``bench.data.base.shard_part``)."""
    part = shard_part(len(y), rank)
    return x[part], y[part]


def shard_weight(shard_size: int, batch_size: int, rank: Rank) -> float:
    """The factor on a rank's mean loss that makes DDP's average of the ranks' gradients the
    gradient of the global batch's mean loss: ``shard_size * W / batch_size`` (1.0 for equal
    shards)."""
    return shard_size * rank.world_size / batch_size


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel (rank 0's parameters and buffers broadcast now, the
    gradients averaged during every backward)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm*d replaced by SyncBatchNorm (same parameters, buffers and
    state-dict keys). Synchronised statistics need CUDA tensors (torch's SyncBatchNorm)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def any_true(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any rank (a collective: every rank must call it)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_floats(value: float, device: torch.device) -> list[float]:
    """Every rank's `value`, in rank order (a collective), as float64."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [float(o.item()) for o in out]


def rank_0_first(load: Callable[[], T], rank: Rank | None) -> T:
    """`load()` (a dataset: its cache is built under a file lock) on rank 0 first, then on the
    other ranks, whose lock waits are silent (``bench.locks.silent_waits``): the ranks of one
    run never wait on each other's lock and say "waiting for another process" about their own
    run; a wait on some other process's lock is reported once, by rank 0. A collective: every
    rank calls it. When rank 0's `load` raises, the other ranks raise RuntimeError and rank 0
    its own exception (the run's error)."""
    if rank is None:
        return load()
    if rank.writes:
        try:
            value = load()
        except BaseException:
            broadcast(False)
            raise
        broadcast(True)
        return value
    if not broadcast(None):
        raise RuntimeError(f"rank {rank.rank}: rank 0 failed to load the data")
    with locks.silent_waits():
        return load()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` (picklable), on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StopVote:
    """The ranks' agreed answer to "stop now?" from each rank's own `should_stop`: true on
    every rank when it is true on any. ``at_step`` votes only every ``STOP_POLL_STEPS`` steps
    (false in between, on every rank alike); ``now`` always votes."""

    def __init__(self, should_stop: Callable[[], bool], device: torch.device,
                 every: int = STOP_POLL_STEPS) -> None:
        self.should_stop = should_stop
        self.device = device
        self.every = every

    def at_step(self, step: int) -> bool:
        return step % self.every == 0 and self.now()

    def now(self) -> bool:
        return any_true(self.should_stop(), self.device)
