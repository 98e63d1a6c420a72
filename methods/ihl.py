"""Inverted hinge loss (IHL), alone or on FILA-initialised LoRA adapters (`ihl_fila`).

Cha et al., "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", arXiv 2408.06621 (IHL, Sec. 3):
per forget token, max(0, 1 + p(y_t) - max_{v != y_t} p(v)): lower the true token only until another token overtakes
it, instead of GA's unbounded push. Reference code csm9493/efficient-llm-unlearning TOFU/dataloader.py (`IHL`):
softmax over the vocabulary, Crammer-Singer margin, mean over the labelled tokens, `loss = forget_loss +
retain_loss` (retain = HF token-mean NLL), i.e. retain weight 1.
"""

from __future__ import annotations

from typing import Iterable

import torch

from methods.base import Batch, BatchPart, UnlearningMethod, as_float_logs
from methods.fila import fila_initialise
from methods.hyperparameters import IHLFILAHyperparameters, IHLHyperparameters
from methods.numerics import (
    forward_logits,
    masked_token_mean,
    next_token_log_softmax,
    shift_for_next_token,
    token_denominator,
)


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


class InvertedHingeLoss(UnlearningMethod):
    """IHL(forget), token-mean over the forget batch, + alpha * NLL(retain)."""

    name = "ihl"
    Hyperparameters = IHLHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        per_token, mask = inverted_hinge(forward_logits(model, forget), forget["labels"])
        forget_ihl = masked_token_mean(per_token, mask, token_denominator(forget))
        loss = forget_ihl
        logs = {"forget_ihl": forget_ihl}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)


class InvertedHingeLossFILA(InvertedHingeLoss):
    """IHL trained through LoRA adapters that FILA initialises from the forget/retain Fisher information."""

    name = "ihl_fila"
    Hyperparameters = IHLFILAHyperparameters

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
