"""Gradient ascent (GA): push the forget set's likelihood down by maximising its NLL.

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", arXiv 2210.01504 (the
unlikelihood objective, Sec. 3); the TOFU baseline "Gradient Ascent", arXiv 2401.06121 Sec. 5.
"""

from __future__ import annotations

import torch

from methods.base import Batch, UnlearningMethod, as_float_logs
from methods.hyperparameters import GAHyperparameters
from methods.numerics import forward_logits, token_denominator, token_mean_nll


class GradientAscent(UnlearningMethod):
    """Minimise -NLL(forget), the NLL averaged over the forget batch's labelled tokens."""

    name = "ga"

    Hyperparameters = GAHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        # open-unlearning GradAscent: `loss = -model(**forget).loss`, HF's token-mean NLL over the whole batch.
        forget_nll = token_mean_nll(forward_logits(model, forget), forget["labels"], token_denominator(forget))
        return -forget_nll, as_float_logs(forget_nll=forget_nll)
