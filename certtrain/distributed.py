"""Data-parallel training over torch.distributed: `torchrun --nproc_per_node=N train.py ...`.

What a run means with N ranks:
- `batch_size` is the GLOBAL batch: every rank draws the same global batch from the same seeded
  generator and bounds its contiguous shard of it, so N ranks follow the one-process run (same
  parameters to float rounding) and a checkpoint resumes under any world size.
- Each rank's loss is its share of the global batch's loss (local mean x local size / global
  size); the gradients are summed over ranks by one all-reduce of a flat buffer per step. Not
  DistributedDataParallel's hooks: the bound engine uses the parameters outside the module's
  forward (and at kappa = 0 the forward is not in the loss at all), which DDP's reducer does
  not expect; one flat all-reduce is exact and simple, at the price of no overlap of
  communication with the backward pass.
- BatchNorm: the clean-batch statistics (in the forward and inside the bounds) are the rank's
  own shard's, as in DDP without SyncBatchNorm; the running statistics are averaged over ranks
  after every step so that every rank holds the same model. With BatchNorm the run therefore
  differs from the one-process run (statistics of B / N samples instead of B).
- Only rank 0 writes the checkpoint, TensorBoard and metrics.json; evaluation is split over the
  ranks and the counts summed.
- The GM estimators' radius draws are made for the global batch on every rank (same generator),
  each rank taking its shard's draws.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# A rank that stops answering (it died, or hangs) makes the others fail after this long
# instead of waiting for ever; torchrun then stops every rank.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, total: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous share of `total` items (sizes differ by <= 1)."""
        base, extra = divmod(total, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


SINGLE = World()


def world_from_env() -> World:
    """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK (one process without it)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def start(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) if the world has several ranks."""
    if world.active and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT)


def stop(world: World, finished: bool = True) -> None:
    """Leave the process group while the interpreter is fully alive.

    A finished run first waits at a barrier, so no rank tears its connections down while a peer
    still talks to it; then the group is destroyed and whatever referenced it collected, so gloo's
    worker threads are joined here and not during interpreter shutdown (a process that exits with
    them alive aborts with "terminate called without an active exception"). A run that failed
    skips the barrier: its peers may be waiting in another collective.
    """
    if not (world.active and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def sum_gradients(model: nn.Module, world: World) -> None:
    """Sum every parameter's gradient over the ranks, in one all-reduce of a flat buffer."""
    if not world.active:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:  # every rank must contribute the same buffer layout
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def average_buffers(model: nn.Module, world: World) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks."""
    if not world.active:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.flatten() for b in buffers])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(values)
    return values


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
