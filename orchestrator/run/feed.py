"""What a long-lived Ray Train worker group and its driver say to each other, and how every rank hears it.

Resident worker groups (`orchestrator/run/resident.py`) serve `unlearn run`, sweep slots and request streams: the
driver puts `Task` messages on a feed (a `ray.util.queue.Queue`), rank 0 takes the next one and broadcasts it, so
that every rank works on the same thing, and says `Idle` after a quiet while so that the other ranks' collectives
never time out while the driver has nothing to send. Rank 0 answers on a results queue with `TaskReport` (a run's
progress report, when the caller asked for them), `TaskDone` or `TaskFailed`.

Every message is a dataclass both sides import: a misspelt field fails where the message is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

IDLE_POLL_S = 2.0  # rank 0's wait on the feed before it tells the other ranks "nothing yet" (keeps gloo alive)
POLL_INTERVAL_S = 0.25  # Ray Train's controller polling of the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)

Forward = Callable[[dict[str, Any]], None]


class WorkerTask(Protocol):
    """Work a resident group does on every rank; rank 0's return value goes back to the driver.

    `forward`: hands the driver a progress report of the task (None when the caller did not ask for them)."""

    def run(self, slot: "WorkerSlot", forward: Forward | None) -> Any: ...


class WorkerSlot:
    """What a worker process keeps between tasks: a stream's resident model, under a key of the stream's choosing."""

    def __init__(self) -> None:
        self.kept: dict[str, Any] = {}


@dataclass(frozen=True)
class Task:
    call: int
    task: WorkerTask
    forward_reports: bool = False


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class TaskReport:
    call: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class TaskDone:
    call: int
    result: Any


@dataclass(frozen=True)
class TaskFailed:
    call: int
    error: str


FeedMessage = Task | Idle | Stop
ResultMessage = TaskReport | TaskDone | TaskFailed


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


def next_message(feed: Any, rank: int, world_size: int, timeout: float = IDLE_POLL_S) -> FeedMessage:
    """The driver's next message on every rank (rank 0 reads `feed`); `Idle()` after `timeout` s, `Stop()` once
    the feed is gone."""
    message: FeedMessage | None = None
    if rank == 0:
        from ray.exceptions import RayActorError
        from ray.util.queue import Empty

        try:
            message = feed.get(block=True, timeout=timeout)
        except Empty:
            message = Idle()
        except RayActorError:  # the feed died with its owner (a driver or Tune trial that ended): nobody to serve
            message = Stop()
    if world_size > 1:
        import torch.distributed as dist

        holder = [message]
        dist.broadcast_object_list(holder, src=0)
        message = holder[0]
    if not isinstance(message, (Task, Idle, Stop)):
        raise TypeError(f"unexpected message on the worker feed: {message!r}")
    return message
