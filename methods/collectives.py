"""Gradient averaging for methods that use gradients outside `engine.step()` (OFMU's inner loop, SOUL's GNB refresh).

`engine.step()` averages `p.grad` across workers before the optimizer sees it; a method that moves parameters or
updates optimizer state from a gradient of its own must average that gradient the same way, or the workers' copies
of the model drift apart. With one process (or no torch.distributed) this is a no-op.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def average_across_workers(tensors: Sequence[torch.Tensor]) -> None:
    """In place: replace each tensor by its mean over all workers (one flattened all-reduce)."""
    if not tensors or not (dist.is_available() and dist.is_initialized()):
        return
    world_size = dist.get_world_size()
    if world_size == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
