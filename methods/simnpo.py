"""SimNPO: reference-free NPO with a length-normalised log-likelihood and a margin.

Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning", arXiv 2410.07163
(the SimNPO loss, Sec. 4):  L = -(2/beta) E_forget[ logsigmoid(-(beta/|y|) log p(y|x) - gamma_paper) ].
The reference code (OPTML-Group/Unlearn-Simple TOFU/dataloader.py, `simnpo_grad_diff`) and open-unlearning
(src/trainer/unlearn/simnpo.py) both compute logsigmoid(beta * (NLL/|y| - delta)), i.e. the margin is scaled by
beta: gamma_paper = beta * delta. We follow the code and open-unlearning's names, so that its configs carry over:
`delta` is the margin, `gamma` the forget weight, `alpha` the retain weight (configs/trainer/SimNPO.yaml: beta 4.5,
delta 0, gamma 0.125 (Unlearn-Simple's `npo_coeff`), alpha 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, UnlearningMethod, as_float_logs
from methods.hyperparameters import SimNPOHyperparameters
from methods.numerics import forward_logits, sequence_denominator, sequence_mean, sequence_mean_logprob


class SimNPO(UnlearningMethod):
    """gamma * SimNPO(forget) + alpha * NLL(retain); no reference model."""

    name = "simnpo"
    Hyperparameters = SimNPOHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.hparams.beta
        forget = batch["forget"]
        # |y| = the answer's labelled tokens (open-unlearning: `loss_mask.sum(-1)`); log p(y|x) / |y| per sequence.
        mean_logp = sequence_mean_logprob(forward_logits(model, forget), forget["labels"])
        # arXiv 2410.07163 SimNPO loss, the reference code's margin: -(2/beta) logsigmoid(beta * (NLL/|y| - delta)).
        rows = sequence_denominator(forget)
        forget_loss = (-2.0 / beta) * sequence_mean(F.logsigmoid(beta * (-mean_logp - self.hparams.delta)), rows)
        loss = self.hparams.gamma * forget_loss
        logs = {"forget_simnpo": forget_loss, "forget_mean_logprob": sequence_mean(mean_logp.detach(), rows)}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)
