"""The served model's weights around one request: a copy to roll back to, the model whole on rank 0, the rollback.

A request needs three things of the model it changes: a copy from before it (a rolled-back request puts it back),
the model whole on rank 0 (which evaluates it and writes the checkpoint), and the rollback itself on every rank.
A plain model does all of it in place: every rank holds it whole and keeps a CPU copy of its own. Under a DeepSpeed
engine kept across requests (`orchestrator/stream/worker.py`) rank 0 alone keeps the copy, gathered from the ranks
(ZeRO-3 partitions every parameter; under ZeRO-1/2 rank 0 holds them whole), and a rollback scatters it from rank 0
again, then refreshes the optimizer's fp32 master partitions, which would otherwise write the request's weights back
at the next step. So no rank but rank 0 ever holds a second copy of a sharded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine


@dataclass
class RollbackCopy:
    """The weights before a request, on the CPU: every rank's own (plain model), or rank 0's alone (DeepSpeed)."""

    state: dict[str, torch.Tensor] | None  # None on a rank that keeps no copy

    @classmethod
    def take(cls, model: torch.nn.Module, engine: "DeepSpeedStepEngine | None", rank: int) -> "RollbackCopy":
        """Every rank must call it (under ZeRO-3 the weights are gathered)."""
        state = model.state_dict() if engine is None else engine.full_state_dict()
        if state is None or (engine is not None and rank != 0):
            return cls(None)
        return cls({name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()})

    def restore(self, model: torch.nn.Module, engine: "DeepSpeedStepEngine | None", rank: int) -> None:
        """Put the copy back on every rank; every rank must call it. `engine`: the engine that now holds `model`
        (the first request's copy was taken before its engine was built: it is whole on every rank, and rank 0's
        is scattered like any other)."""
        if engine is None:
            model.load_state_dict(self.state)
            return
        _scatter_from_rank_zero(engine.module, self.state, rank)
        engine.refresh_master_weights()


def whole_on_rank_zero(model: torch.nn.Module, engine: "DeepSpeedStepEngine | None", copy: RollbackCopy,
                       target_dir: str, dtype: str, device: torch.device, rank: int) -> torch.nn.Module | None:
    """The model as rank 0 can evaluate it: `model` itself where rank 0 holds it whole (plain, ZeRO-1/2), a plain
    model of `copy`'s weights under ZeRO-3; None on the other ranks under ZeRO-3."""
    if engine is None or engine.stage < 3:
        return model
    if rank != 0:
        return None
    from orchestrator.models.loading import fresh_copy_of

    plain = fresh_copy_of(engine.module, target_dir, getattr(torch, dtype))
    plain.load_state_dict(copy.state)
    return plain.to(device).eval()


def _scatter_from_rank_zero(module: torch.nn.Module, state: dict[str, torch.Tensor] | None, rank: int) -> None:
    import torch.distributed as dist

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if hasattr(parameter, "ds_id"):  # a ZeRO-3 partition: gathered, set on rank 0, partitioned again
                import deepspeed

                with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
                    if rank == 0:
                        parameter.data.copy_(state[name])
            else:
                if rank == 0:
                    parameter.data.copy_(state[name])
                if dist.is_initialized() and dist.get_world_size() > 1:
                    dist.broadcast(parameter.data, src=0)
