"""Training over several processes (torchrun): joining the group, the global batch, summed gradients.

Every process computes the loss over the whole global batch: the embeddings of all processes are
gathered, and only this process's slice carries gradient (`gather_with_grad`). Summing the query
gradients across processes (`sync_gradients`) then gives exactly the gradient of the global loss,
so W processes with B pairs each train like one process with W·B (tested on the CPU with gloo).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str | None) -> tuple[int, str | None]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL for a CUDA `device`,
    else gloo. Returns this process's rank and its device (each CUDA process takes its local GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    cuda = (device or "").startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    return dist.get_rank(), device


def distributed_context() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Concatenate `x` from all processes; only this process's slice carries gradient."""
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.detach())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def sync_gradients(tensors: list[torch.Tensor], temperature: torch.Tensor, world_size: int) -> None:
    """Each process holds the global loss's gradient through its own slice only: sum those.

    The temperature's gradient is already whole (and equal) on every process: average it.
    """
    for param in tensors:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
    dist.all_reduce(temperature.grad, op=dist.ReduceOp.SUM)
    temperature.grad /= world_size


def rank0_value(value, group=None):
    """Rank 0's `value` on every process of `group` (`value` itself outside torch.distributed): one
    decision for all, where processes looking for themselves could decide differently (a
    node-local folder, a file system's caching)."""
    rank, world_size = distributed_context()
    if world_size == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]
