"""Weighted gradient ascent (WGA): gradient ascent whose token weights fade as the token is forgotten.

Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond", arXiv 2502.19301 (ICLR
2025): per forget token, ascend the NLL weighted by the token's own (detached) probability,
    L_WGA = -mean_t [ p(y_t)^beta * NLL_t ] = mean_t [ sg(p(y_t))^beta * log p(y_t) ],
so that tokens already unlikely stop pulling and the ascent does not run away. Reduction and weights as open-unlearning
`compute_wga_loss` (src/trainer/utils.py; mean over the batch's labelled tokens) and configs/trainer/WGA.yaml (beta 1,
gamma 1 on the forget term, alpha 1 on the retain NLL).
"""

from __future__ import annotations

import torch

from methods.base import Batch, UnlearningMethod, as_float_logs
from methods.hyperparameters import WGAHyperparameters
from methods.numerics import forward_logits, masked_token_mean, token_denominator, token_logprobs


def weighted_ascent(logprobs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                    denominator: torch.Tensor | None = None) -> torch.Tensor:
    """mean_t [sg(w_t) * log p(y_t)] over the labelled tokens: gradient ascent on the NLL with fixed token weights."""
    return masked_token_mean(weights.detach() * logprobs, mask, denominator)


class WGA(UnlearningMethod):
    """gamma * WGA(forget) + alpha * NLL(retain)."""

    name = "wga"
    Hyperparameters = WGAHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        logprobs, mask = token_logprobs(forward_logits(model, forget), forget["labels"])
        weights = torch.exp(self.hparams.beta * logprobs.detach())  # p(y_t)^beta
        tokens = token_denominator(forget)
        forget_wga = weighted_ascent(logprobs, weights, mask, tokens)
        loss = self.hparams.gamma * forget_wga
        logs = {"forget_wga": forget_wga, "forget_weight": masked_token_mean(weights, mask, tokens)}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)
