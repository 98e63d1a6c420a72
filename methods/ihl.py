"""Inverted hinge loss (IHL), alone or on FILA-initialised LoRA adapters (`ihl_fila`).

Cha et al., "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", arXiv 2408.06621 (IHL, Sec. 3):
per forget token, max(0, 1 + p(y_t) - max_{v != y_t} p(v)): lower the true token only until another token overtakes
it, instead of GA's unbounded push. Reference code csm9493/efficient-llm-unlearning TOFU/dataloader.py (`IHL`):
softmax over the vocabulary, Crammer-Singer margin, mean over the labelled tokens, `loss = forget_loss +
retain_loss` (retain = HF token-mean NLL), i.e. retain weight 1.
"""

from __future__ import annotations

from typing import Iterable

import pydantic
import torch

from methods.base import Batch, BatchPart, Hyperparameters, UnlearningMethod, as_float_logs
from methods.fila import fila_initialise
from methods.numerics import (
    forward_logits,
    masked_token_mean,
    next_token_log_softmax,
    shift_for_next_token,
    token_denominator,
)
from methods.registry import register


def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token IHL `[batch, seq - 1]` and the label mask.

    1 + p(y) - max_{v != y} p(v) lies in [0, 2] for any distribution (both probabilities are in [0, 1]), so the
    paper's max(0, .) never binds and is left out; the value is 0 only when p(y) = 0 and another token has p = 1.
    """
    log_probs, mask = next_token_log_softmax(logits, labels)
    probs = log_probs.exp()
    true_token = shift_for_next_token(logits, labels)[1].clamp(min=0).unsqueeze(-1)
    true_prob = probs.gather(-1, true_token).squeeze(-1)
    # Probabilities are >= 0, so zeroing the true token's entry leaves the max over the other tokens.
    best_other_prob = probs.scatter(-1, true_token, 0.0).max(dim=-1).values
    return (1.0 + true_prob - best_other_prob) * mask, mask


@register
class InvertedHingeLoss(UnlearningMethod):
    """IHL(forget), token-mean over the forget batch, + alpha * NLL(retain)."""

    name = "ihl"
    uses_retain = True

    class Hyperparameters(Hyperparameters):
        alpha: float = pydantic.Field(1.0, ge=0, description="weight of the retain NLL (reference code: 1); 0 drops it")

    def __init__(self, hparams: Hyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self.uses_retain = hparams.alpha > 0

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        per_token, mask = inverted_hinge(forward_logits(model, forget), forget["labels"])
        forget_ihl = masked_token_mean(per_token, mask, token_denominator(forget))
        loss = forget_ihl
        logs = {"forget_ihl": forget_ihl}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)


@register
class InvertedHingeLossFILA(InvertedHingeLoss):
    """IHL trained through LoRA adapters that FILA initialises from the forget/retain Fisher information."""

    name = "ihl_fila"

    class Hyperparameters(InvertedHingeLoss.Hyperparameters):
        # The reference sweeps r in {4, 8, 16, 32} with lora_alpha = 2r and no dropout (TOFU/run_forget.sh).
        rank: int = pydantic.Field(8, gt=0, description="LoRA rank r (reference sweeps 4, 8, 16, 32)")
        lora_alpha: float = pydantic.Field(16.0, gt=0, description="LoRA alpha; scaling = lora_alpha / rank (ref: 2r)")
        target_modules: list[str] | None = pydantic.Field(
            None,
            description="Linear modules to adapt (full names or name suffixes, as peft matches them); "
            "default: every torch.nn.Linear except the output head",
        )

    def init_adapters(
        self, model: torch.nn.Module, forget_batches: Iterable[BatchPart], retain_batches: Iterable[BatchPart]
    ) -> torch.nn.Module:
        return fila_initialise(
            model,
            forget_batches,
            retain_batches,
            rank=self.hparams.rank,
            lora_alpha=self.hparams.lora_alpha,
            target_modules=self.hparams.target_modules,
        )
