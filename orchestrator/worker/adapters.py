"""Adapters laid over the model before any engine wraps it: the method's own (FILA) or `train.lora`'s."""

from __future__ import annotations

from typing import Any, Callable

import torch

from methods import UnlearningMethod
from orchestrator.worker.batching import UnlearningBatches
from orchestrator.worker.job import TrainJob

ToDevice = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def lay_adapters(model: torch.nn.Module, method: UnlearningMethod, job: TrainJob, parts: tuple[str, ...],
                 world_size: int, to_device: ToDevice) -> torch.nn.Module:
    """The model wrapped in FILA's or `train.lora`'s adapters, or `model` itself when neither asks for them.

    FILA's Fisher estimate runs over the whole forget set on every worker (not the worker's shard), so that 1 or
    N workers start from the same adapters; rank 0's result is then broadcast so that every copy is identical.
    """
    cfg = job.train
    full = UnlearningBatches(job.rows, cfg.batch_size, job.pad_token_id, 0, 1, cfg.seed, parts)
    adapted = method.init_adapters(
        model,
        (to_device(b["forget"]) for b in full.epoch(0)),
        (to_device(b["retain"]) for b in full.epoch(0) if "retain" in b),
    )
    if adapted is model and cfg.lora:
        adapted = _lora(model, cfg.lora)
    if adapted is not model and world_size > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in adapted.state_dict().values():
                dist.broadcast(tensor, src=0)
    return adapted


def _lora(model: torch.nn.Module, lora: dict[str, Any]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"],
                                            target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
