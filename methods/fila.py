"""FILA: Fisher-weighted initialisation of LoRA adapters, so that training starts on the forget set's parameters.

Cha et al., arXiv 2408.06621 (FILA, Sec. 3). Details settled by the reference code csm9493/efficient-llm-unlearning:
- TOFU/measure_importance.py: per batch, the squared gradient of HF's token-mean NLL times the batch's token count,
  summed and divided by the total token count, on the forget set and on the retain set (the empirical Fisher);
- TOFU/forget.py: importance = F_forget / (1e-5 + F_retain); row weights w = sqrt(importance.sum(dim=1)) (one per
  output row of W [out, in]); rank-r SVD of diag(w) W; with s = lora_alpha / r, S' = S / s,
  A = sqrt(S') V^T, B = diag(1 / (w + 1e-5)) U sqrt(S'); the base weight becomes W - s * B A, so the model's
  function is unchanged at step 0 and only A and B train. LoRA targets: every linear layer but the output head.
We use an exact SVD (`torch.linalg.svd`) where the reference uses the randomised `torch.svd_lowrank(q=r)`: the
result is deterministic, and the cost (once per run) is small next to the Fisher pass.
"""

from __future__ import annotations

from typing import Iterable

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from methods.base import BatchPart
from methods.numerics import forward_logits, shift_for_next_token, token_mask, token_mean_nll

FISHER_EPS = 1e-5  # reference: `torch.div(importance_f / f_cnt, 1e-5 + importance_r / r_cnt)` and `1 / (w + 1e-5)`


def lora_target_names(model: torch.nn.Module, target_modules: Iterable[str] | None = None) -> list[str]:
    """Full names of the Linear layers FILA adapts: those matching `target_modules` (a full name or a `.`-suffix, as
    peft matches), or by default every torch.nn.Linear except the output head (the reference drops `lm_head`)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = list(target_modules) if target_modules is not None else None
    names = []
    for name, module in model.named_modules():
        if wanted is None:
            if isinstance(module, torch.nn.Linear) and module is not head:
                names.append(name)
        elif any(name == t or name.endswith("." + t) for t in wanted):
            if not isinstance(module, torch.nn.Linear):
                raise ValueError(f"FILA adapts torch.nn.Linear layers only; {name!r} is {type(module).__name__}")
            names.append(name)
    if not names:
        raise ValueError(f"no Linear layer matches target_modules={wanted!r}")
    return names


def empirical_fisher(
    model: torch.nn.Module, batches: Iterable[BatchPart], weights: dict[str, torch.nn.Parameter]
) -> dict[str, torch.Tensor]:
    """Token-weighted mean over batches of the squared gradient of the token-mean NLL, per weight (float32, CPU).

    As measure_importance.py: each batch contributes count * grad^2, the sum is divided by the total count (the
    count is the number of labelled tokens after the shift, the denominator of the batch's mean NLL).
    """
    device = next(iter(weights.values())).device
    totals = {name: torch.zeros(w.shape, dtype=torch.float32) for name, w in weights.items()}
    tokens = 0.0
    for part in batches:
        part = {k: v.to(device) for k, v in part.items()}
        logits = forward_logits(model, part)
        count = float(token_mask(shift_for_next_token(logits, part["labels"])[1]).sum())
        if count == 0:
            continue
        nll = token_mean_nll(logits, part["labels"])
        grads = torch.autograd.grad(nll, list(weights.values()))
        for name, grad in zip(weights, grads):
            totals[name] += count * grad.detach().float().pow(2).cpu()
        tokens += count
    if tokens == 0:
        raise ValueError("FILA needs at least one batch with labelled tokens on both the forget and the retain set")
    return {name: total / tokens for name, total in totals.items()}


def fila_initialise(
    model: torch.nn.Module,
    forget_batches: Iterable[BatchPart],
    retain_batches: Iterable[BatchPart],
    rank: int,
    lora_alpha: float,
    target_modules: Iterable[str] | None = None,
) -> PeftModel:
    """Wrap `model` in LoRA adapters initialised by FILA; the base weights are modified in place.

    Returns the peft model, whose outputs equal the original model's (up to rounding) and whose only trainable
    parameters are the LoRA A and B matrices.
    """
    names = lora_target_names(model, target_modules)
    weights = {name: model.get_submodule(name).weight for name in names}
    for name, weight in weights.items():
        if rank > min(weight.shape):
            raise ValueError(f"LoRA rank {rank} exceeds the smaller dimension of {name} {tuple(weight.shape)}")

    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        fisher_forget = empirical_fisher(model, forget_batches, weights)
        fisher_retain = empirical_fisher(model, retain_batches, weights)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)

    config = LoraConfig(
        r=rank, lora_alpha=lora_alpha, target_modules=names, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    for name in names:
        layer = peft_model.base_model.model.get_submodule(name)
        base = layer.base_layer.weight
        W = base.detach().float()
        importance = (fisher_forget[name] / (FISHER_EPS + fisher_retain[name])).to(W.device)
        row_weight = importance.sum(dim=1).sqrt()
        U, S, Vh = torch.linalg.svd(row_weight[:, None] * W, full_matrices=False)
        scaling = layer.scaling["default"]
        root_S = (S[:rank] / scaling).sqrt()  # the adapter's output is scaling * B A, so split S / scaling into B, A
        lora_A = root_S[:, None] * Vh[:rank]
        lora_B = (1.0 / (row_weight + FISHER_EPS))[:, None] * (U[:, :rank] * root_S)
        with torch.no_grad():
            layer.lora_A["default"].weight.copy_(lora_A)
            layer.lora_B["default"].weight.copy_(lora_B)
            # Residual from the cast adapters, so that base + scaling * B A reproduces W as closely as the dtype allows.
            A_cast = layer.lora_A["default"].weight.float()
            B_cast = layer.lora_B["default"].weight.float()
            base.copy_(W - scaling * B_cast @ A_cast)
    return peft_model
