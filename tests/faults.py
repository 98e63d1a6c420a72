"""Faults injected from the tests, into real worker processes: nothing in the production code knows of them.

`killing_train_loop` and `killing_resident_loop` are Ray Train functions that first arm a kill in the worker process
they run in, then run the production function (`orchestrator/worker/entry.py`, `orchestrator/run/resident.py`).
The kill: after the built method's `step`-th training step on rank `rank`, the process SIGKILLs itself, once (the
marker file records that it already died, so a restarted worker group runs through). A test hands one to the code
that starts the workers by patching the name that code looks up (`run.unlearning.train_loop_per_worker`,
`run.resident.resident_loop_per_worker`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable


def arm_kill_after_step(step: int, rank: int, marker: str) -> None:
    """In this worker process: every method built from now on SIGKILLs the process after its `step`-th training
    step on rank `rank`, unless `marker` exists (then it was done once already)."""
    import ray.train

    import methods

    build = methods.build
    if getattr(build, "armed_kill", False):
        return

    def build_with_kill(*args: Any, **kwargs: Any):
        method = build(*args, **kwargs)
        training_step = method.training_step
        taken = [0]

        def step_then_maybe_die(model, batch, engine):
            logs = training_step(model, batch, engine)
            taken[0] += 1
            me = ray.train.get_context().get_world_rank()
            if taken[0] == step and me == rank and not Path(marker).exists():
                Path(marker).write_text(f"rank {me} killed itself at step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            return logs

        method.training_step = step_then_maybe_die
        return method

    build_with_kill.armed_kill = True  # type: ignore[attr-defined]
    methods.build = build_with_kill


def killing_train_loop(step: int, rank: int, marker: str) -> Callable[[dict[str, Any]], Any]:
    """`train_loop_per_worker` with a kill armed (see the module docstring)."""
    def train_loop(config: dict[str, Any]):
        from orchestrator.worker.entry import train_loop_per_worker

        arm_kill_after_step(step, rank, marker)
        return train_loop_per_worker(config)

    return train_loop


def killing_resident_loop(step: int, rank: int, marker: str) -> Callable[[dict[str, Any]], Any]:
    """`resident_loop_per_worker` with a kill armed (see the module docstring)."""
    def resident_loop(config: dict[str, Any]):
        from orchestrator.run.resident import resident_loop_per_worker

        arm_kill_after_step(step, rank, marker)
        return resident_loop_per_worker(config)

    return resident_loop
