"""Gradient-norm membership-inference attack: members are the examples whose loss the model barely wants to move.

A model fitted to an example sits near a minimum of that example's loss, so the gradient of the loss with respect to
the weights is small there; an example it never saw pulls harder (Duan et al. 2024, arXiv 2402.17012, "Do Membership
Inference Attacks Work on Large Language Models?", use it among their attacks). The conventions follow
open-unlearning `src/evals/metrics/mia/gradnorm.py` so that the numbers compare with theirs:

- one backward per example (per-sample gradients; their TOFU/MUSE configs run it with `batch_size: 1`);
- the loss is the mean NLL of the answer tokens *without* the final end-of-sequence prediction (their
  `tokenwise_logprobs`; our `AnswerScores.token_logprobs`, which drops label positions equal to the EOS id);
- the parameters are those with `requires_grad=True` (under LoRA: the adapters, not the frozen base) that the loss
  reaches, each tied weight once (`named_parameters()` de-duplicates, as their `model.parameters()` does);
- normalisation: the score is the *mean over parameter tensors* of each tensor's p-norm, not the p-norm of the
  flattened gradient (`torch.stack([param.grad.norm(p) ...]).mean()` in their code), for p in {1, 2, inf};
- orientation: the norm itself, larger = more loss to move = non-member; so lower = member, like every attack in
  `mia.py`, and `mia.membership_auc(forget, holdout)` gives their `mia_auc` (forget labelled 0, holdout 1).

Two deliberate differences from their code, neither of which changes a number on the models trained here:
- the model's gradients and state are left alone: they call `model.zero_grad()` and `loss.backward()` (wiping any
  accumulated `.grad`) and leave the model in eval mode; we take `torch.autograd.grad`, so `.grad`, `requires_grad`,
  optimizer state and each module's train/eval flag are exactly as before the call;
- the forward runs in eval mode (they switch to train mode), so dropout, where a model has any, adds no noise to the
  score; Llama-family models have none. Gradients are reduced in float32 whatever the parameters' dtype.

An example with no answer token left to score (an empty answer, or one `max_length` truncated away) scores 0.

Not for DeepSpeed ZeRO-3: each rank holds only a shard of every parameter (`ds_numel` / `ds_status` attributes), so a
norm of the local gradient would be a norm of a shard; the function refuses such a model with a ValueError. Gather the
model (or score the exported checkpoint) first. Likewise pass the bare module, not a DDP/FSDP wrapper.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from methods.numerics import forward_logits, token_logprobs
from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation.likelihood import encode_rows, model_device
from orchestrator.evaluation.mia import gradient_attack_name

# Attributes DeepSpeed ZeRO-3 puts on the parameters it partitions.
_ZERO3_ATTRIBUTES = ("ds_numel", "ds_status")


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the attack differentiates: those with `requires_grad`, each (tied) tensor once.

    Raises ValueError for a model partitioned by DeepSpeed ZeRO-3, and for one with nothing trainable."""
    named = list(model.named_parameters())
    for name, param in named:
        if any(hasattr(param, attr) for attr in _ZERO3_ATTRIBUTES):
            raise ValueError(
                f"gradient-norm attack: parameter {name!r} is partitioned by DeepSpeed ZeRO-3 (a rank holds only a "
                "shard, so its gradient norm would be meaningless); gather the model or score its exported checkpoint"
            )
    trainable = [(name, param) for name, param in named if param.requires_grad]
    if not trainable:
        raise ValueError("gradient-norm attack: the model has no parameter with requires_grad=True")
    return trainable


def gradient_norm_scores(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    template: PromptTemplate,
    max_length: int = 512,
    norms: Sequence[float] = (1, 2, math.inf),
) -> dict[str, np.ndarray]:
    """Per-example gradient norms of the answer loss, keyed by attack name ("gradnorm_l1", "gradnorm_l2",
    "gradnorm_linf"; see `mia.GRADIENT_ATTACKS`), each an array indexed like `examples` (lower = member).

    Score of example i for norm p: mean over the trainable parameter tensors W reached by the loss of
    `||d loss_i / d W||_p`, with loss_i the mean NLL of its answer tokens, EOS excluded (see the module docstring).
    One forward and one `torch.autograd.grad` per example; `.grad`, `requires_grad` and train/eval flags are left as
    they were. Raises ValueError for a ZeRO-3-partitioned model, a model with nothing trainable, or a p not in
    {1, 2, inf}.
    """
    names = [gradient_attack_name(p) for p in norms]  # validates p
    if len(set(names)) != len(names):
        raise ValueError(f"gradient-norm attack: norms {tuple(norms)} repeat a p")
    orders = [float(p) for p in norms]
    params = [param for _, param in trainable_parameters(model)]
    out = {name: np.zeros(len(examples), dtype=np.float64) for name in names}
    if not examples:
        return out
    rows = encode_rows(tokenizer, examples, template, max_length)
    device = model_device(model)
    eos = tokenizer.eos_token_id
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for i, row in enumerate(rows):
                values = _example_norms(model, params, row.input_ids, row.labels, eos, orders, device)
                for name, value in zip(names, values):
                    out[name][i] = value
    finally:
        for module, training in modes.items():
            module.training = training
    return out


def _example_norms(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    input_ids: list[int],
    labels: list[int],
    eos: int | None,
    orders: list[float],
    device: torch.device,
) -> list[float]:
    """The mean per-tensor p-norms of one example's loss gradient, one value per order (zeros if nothing to score)."""
    ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    label_ids = torch.tensor([labels], dtype=torch.long, device=device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    logprobs, mask = token_logprobs(forward_logits(model, inputs), label_ids)
    keep = mask.bool()
    if eos is not None:
        keep &= label_ids[:, 1:] != eos
    if not bool(keep.any()):
        return [0.0] * len(orders)
    loss = -logprobs[keep].mean()
    if not loss.requires_grad:
        raise ValueError("gradient-norm attack: the loss does not depend on any parameter with requires_grad=True")
    grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]
    per_tensor = torch.stack(
        [
            torch.stack([torch.linalg.vector_norm(g, ord=p, dtype=torch.float32) for p in orders])
            for g in grads
        ]
    )  # [tensors, orders]
    return per_tensor.mean(dim=0).double().cpu().tolist()
