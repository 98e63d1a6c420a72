"""What a long-lived Ray Train worker group shares: its workers' environment and the driver's feed of messages.

A request stream (`orchestrator/stream/`) and resident run workers (`orchestrator/run/resident.py`) keep one
`TorchTrainer` running and hand its workers work through a `ray.util.queue.Queue`: rank 0 takes the next message
and broadcasts it, so that every rank works on the same thing, and says "idle" after a quiet while so that the
other ranks' collectives never time out while the driver has nothing to send.
"""

from __future__ import annotations

import os
from typing import Any

IDLE_POLL_S = 2.0  # rank 0's wait on the feed before it tells the other ranks "nothing yet" (keeps gloo alive)
POLL_INTERVAL_S = 0.25  # Ray Train's controller polling of the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment variables for Ray Train workers; also shortens the controller's polling in this process."""
    # DeepSpeed picks its accelerator once per process, at import (transformers may import it even without ZeRO):
    # on CPU workers say so rather than let it guess and warn.
    env = {} if use_gpu or "DS_ACCELERATOR" in os.environ else {"DS_ACCELERATOR": "cpu"}
    # Ray Train V2 re-routes `print` through its logger *and* the wrapped stdout: every progress line came twice.
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"
    # Ray Train V2's controller polls the workers every 2 s by default: a run waits that long to be seen starting,
    # to have each report taken, and to be seen finished. Polling a local worker group costs little.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(POLL_INTERVAL_S))
    return env


def next_message(feed: Any, rank: int, world_size: int, timeout: float = IDLE_POLL_S) -> dict[str, Any]:
    """The driver's next message on every rank (rank 0 reads `feed`); `{"kind": "idle"}` after `timeout` s."""
    message: dict[str, Any] | None = None
    if rank == 0:
        from ray.util.queue import Empty

        try:
            message = feed.get(block=True, timeout=timeout)
        except Empty:
            message = {"kind": "idle"}
    if world_size > 1:
        import torch.distributed as dist

        holder = [message]
        dist.broadcast_object_list(holder, src=0)
        message = holder[0]
    assert message is not None
    return message
