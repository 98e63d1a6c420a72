"""Where this worker stands in its group, and the few collectives the loop needs to agree with the others."""

from __future__ import annotations

from typing import Any

import torch


def worker_context(use_gpu: bool) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker."""
    import ray.train

    context = ray.train.get_context()
    device = torch.device("cpu")
    if use_gpu:
        import ray.train.torch

        device = ray.train.torch.get_device()
    return context.get_world_rank(), context.get_world_size(), device


def across_workers(logs: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    """The mean of each logged value over the workers; the same on every rank. A loss's mean over the workers is
    the global batch's: each worker logs its share, its sums over the global counts (`with_global_denominators`)."""
    if world_size == 1:
        return logs
    import torch.distributed as dist

    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / world_size).tolist()))


def gather(value: Any, world_size: int) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def from_rank_zero(value: Any, world_size: int) -> Any:
    """Rank 0's `value` on every rank (a decision rank 0 took for all)."""
    if world_size == 1:
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
