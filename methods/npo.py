"""Negative Preference Optimization (NPO): DPO with only a losing answer, a bounded alternative to gradient ascent.

Zhang et al., "Negative Preference Optimization: Towards Catastrophic Collapse to Effective Unlearning",
arXiv 2404.05868, Sec. 3:  L_NPO = (2/beta) E_forget[ log(1 + (p(y|x) / p_ref(y|x))^beta) ]
                                 = -(2/beta) E_forget[ logsigmoid(-beta * (log p(y|x) - log p_ref(y|x))) ].
log p(y|x) is the *sum* of the answer's token log-probs (open-unlearning `compute_batch_nll` + `compute_dpo_loss`
with no winning answer). Weights as open-unlearning configs/trainer/NPO.yaml: beta 0.1, gamma 1 (forget), alpha 1
(retain NLL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, ReferenceValue, UnlearningMethod, as_float_logs, reference_sequence_logprob
from methods.hyperparameters import NPOHyperparameters
from methods.numerics import forward_logits, sequence_denominator, sequence_logprob, sequence_mean


class NPO(UnlearningMethod):
    """gamma * NPO(forget) + alpha * NLL(retain); the reference sequence log-probs are computed once per example."""

    name = "npo"
    Hyperparameters = NPOHyperparameters
    FORGET_REFERENCE = reference_sequence_logprob("forget")

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (self.FORGET_REFERENCE,)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.hparams.beta
        forget = batch["forget"]
        logp = sequence_logprob(forward_logits(model, forget), forget["labels"])
        logp_ref = self.reference_value(self.FORGET_REFERENCE, forget)
        log_ratio = logp - logp_ref
        # arXiv 2404.05868 Sec. 3; -(2/beta) * logsigmoid(-beta * r) == (2/beta) * log(1 + exp(beta * r)), stable form.
        rows = sequence_denominator(forget)
        forget_loss = (-2.0 / beta) * sequence_mean(F.logsigmoid(-beta * log_ratio), rows)
        loss = self.hparams.gamma * forget_loss
        logs = {"forget_npo": forget_loss, "forget_log_ratio": sequence_mean(log_ratio.detach(), rows)}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)
