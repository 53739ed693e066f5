"""Data parallelism under ``torchrun``: process-group setup and the few collectives the loop needs.

Each rank takes a contiguous slice of every global batch; losses are sums divided by the *global*
number of supervised positions, so the gradient (after DDP's mean over ranks, undone by a factor
of ``world``) equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 when not distributed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    rank, world, _ = world_info()
    if world <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first, then on the others: build-or-load steps (a SID table written
    into the run folder) so that only one process ever writes the file and the others read it complete."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """The end of a ``torchrun`` job: wait for every process (the main one may still be testing), then close the
    group, so that no process exits while the group's threads still run (gloo then aborts it)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
