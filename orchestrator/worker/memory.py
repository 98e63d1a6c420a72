"""Trading compute for memory on a worker: `train.gradient_checkpointing`.

With HF gradient (activation) checkpointing each decoder block keeps only its input for backward and recomputes its
activations there: about one extra forward per step, in exchange for the blocks' activations (what
`orchestrator/models/plan.py` counts per token). The non-reentrant variant of `torch.utils.checkpoint` is used: it
gives the same gradients as no checkpointing, and (unlike the reentrant one) reaches the parameters inside a block
even when the block's input needs no gradient, so LoRA over a frozen base needs no input-gradient hook for it (peft
and HF add one anyway when they see checkpointing on; it changes no gradient).
"""

from __future__ import annotations

import torch


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any block of `model` (an HF model, peft-wrapped or not) recomputes its activations in backward."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def set_gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Turn `model`'s HF gradient checkpointing on (non-reentrant, no KV cache while training) or off.

    Called on the bare model before any adapter or engine wraps it. Idempotent, so that a resident model that serves
    many runs (`orchestrator/stream/worker.py`) is set up once and not given a second input-gradient hook per run;
    a run without checkpointing turns off what an earlier run turned on. HF checkpoints only in training mode, with
    gradients enabled: evaluation and generation are untouched.
    """
    if not enabled:
        if is_checkpointing(model):
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.gradient_checkpointing: {type(model).__name__} does not support HF gradient "
                         "checkpointing; set it to false")
    if is_checkpointing(model):
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated there)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # The layers would drop the cache themselves (with a warning); without it none is built for the forward at all.
    model.config.use_cache = False
