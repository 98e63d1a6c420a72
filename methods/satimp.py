"""SatImp: gradient ascent with token weights from saturation (p^beta1) and importance ((1 - p)^beta2).

Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", arXiv 2505.11953 (ICML 2025):
per forget token, with p_t = p(y_t) detached,
    L_SatImp = -mean_t [ p_t^beta1 * (1 - p_t)^beta2 * NLL_t ] = mean_t [ p_t^beta1 (1 - p_t)^beta2 log p(y_t) ],
which spends the ascent on tokens neither forgotten already (saturation) nor near-certain (importance). Reduction as
open-unlearning `compute_satimp_loss` (src/trainer/utils.py; mean over the batch's labelled tokens); weights as its
configs/trainer/SatImp.yaml: beta1 5, beta2 1, gamma 0.1 (forget), alpha 1 (retain NLL). The method's README
(community/methods/SatImp) and the class's own defaults put it the other way round (gamma 1, alpha 0.1); the config
is what `trainer=SatImp` runs.
"""

from __future__ import annotations

import torch

from methods.base import Batch, UnlearningMethod, as_float_logs
from methods.hyperparameters import SatImpHyperparameters
from methods.numerics import forward_logits, masked_token_mean, token_denominator, token_logprobs
from methods.wga import weighted_ascent


class SatImp(UnlearningMethod):
    """gamma * SatImp(forget) + alpha * NLL(retain)."""

    name = "satimp"
    Hyperparameters = SatImpHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        logprobs, mask = token_logprobs(forward_logits(model, forget), forget["labels"])
        p = logprobs.detach().exp()
        weights = p ** self.hparams.beta1 * (1.0 - p) ** self.hparams.beta2
        tokens = token_denominator(forget)
        forget_satimp = weighted_ascent(logprobs, weights, mask, tokens)
        loss = self.hparams.gamma * forget_satimp
        logs = {"forget_satimp": forget_satimp, "forget_weight": masked_token_mean(weights, mask, tokens)}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)
