"""Step engines: what a method's `training_step` calls to apply gradients, in plain PyTorch or under DeepSpeed.

The plain engine averages gradients across Ray Train workers itself (one flattened all-reduce) instead of wrapping
the model in DDP, so that methods which set `p.grad` by hand (OFMU's Hessian-vector update) are reduced correctly
too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

ENGINE_STATE = "engine_state.pt"


class TorchStepEngine:
    """backward / step for a plain `nn.Module` with any optimizer, on one or many workers."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def module(self) -> torch.nn.Module:
        """The trained model itself (`model` is what methods call; here the two are the same)."""
        return self.model

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        if self.world_size > 1 and params:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n
        if self.max_grad_norm is not None and params:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    # --- checkpoints and export: the same surface as DeepSpeedStepEngine ------------------------------------
    def save(self, folder: str | Path, rank: int) -> bool:
        """Rank 0 writes model + optimizer + scheduler (every worker holds the same); True where files were written."""
        if rank != 0:
            return False
        torch.save({"model": self.model.state_dict(), **self.state_dict()}, Path(folder) / ENGINE_STATE)
        return True

    def load(self, folder: str | Path) -> None:
        state = torch.load(Path(folder) / ENGINE_STATE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.load_state_dict(state)

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self.model.state_dict()

    def close(self) -> None:
        """Nothing to release (the DeepSpeed engine takes its hooks off the module here)."""

    def partition_numel(self) -> tuple[int, int]:
        n = sum(p.numel() for p in self.model.parameters())
        return n, n


def linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then constant (open-unlearning's unlearning default)."""
    warmup = int(total_steps * warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
