"""IdkPO: DPO that prefers an "I don't know" answer (the `alternate` part) over the true forget answer.

DPO: Rafailov et al., arXiv 2305.18290 Eq. 7; used for unlearning with refusals as TOFU's "Preference
Optimization", arXiv 2401.06121 Sec. 5, and as "IdkPO" in the NPO paper, arXiv 2404.05868. We follow
open-unlearning's DPO (src/trainer/unlearn/dpo.py + `compute_dpo_loss`): per-sequence *summed* log-probs and a 2/beta
factor, -(2/beta) * logsigmoid(beta * ((logp_w - logp_ref_w) - (logp_l - logp_ref_l))), plus a retain NLL; weights
from configs/trainer/DPO.yaml: beta 0.1, gamma 1 (forget), alpha 1 (retain).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import (Batch, BatchPart, ReferenceValue, UnlearningMethod, as_float_logs,
                          reference_sequence_logprob)
from methods.hyperparameters import IdkPOHyperparameters
from methods.numerics import forward_logits, sequence_denominator, sequence_logprob, sequence_mean


class IdkPO(UnlearningMethod):
    """gamma * DPO(win = alternate, lose = forget) + alpha * NLL(retain)."""

    name = "idkpo"
    Hyperparameters = IdkPOHyperparameters
    # Distinct keys: `alternate` row i shares its index with `forget` row i.
    WIN_REFERENCE, LOSE_REFERENCE = reference_sequence_logprob("alternate"), reference_sequence_logprob("forget")

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (self.WIN_REFERENCE, self.LOSE_REFERENCE)

    def _log_ratio(self, model: torch.nn.Module, part: BatchPart, reference: ReferenceValue) -> torch.Tensor:
        """log p(y|x) - log p_ref(y|x) per sequence; the reference term is cached per example."""
        logp = sequence_logprob(forward_logits(model, part), part["labels"])
        return logp - self.reference_value(reference, part)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        beta = self.hparams.beta
        win = self._log_ratio(model, batch["alternate"], self.WIN_REFERENCE)
        lose = self._log_ratio(model, batch["forget"], self.LOSE_REFERENCE)
        margin = win - lose
        # arXiv 2305.18290 Eq. 7 with open-unlearning's 2/beta scaling (`compute_dpo_loss`).
        rows = sequence_denominator(batch["forget"])  # `alternate` row i pairs with `forget` row i: the same rows
        forget_loss = (-2.0 / beta) * sequence_mean(F.logsigmoid(beta * margin), rows)
        loss = self.hparams.gamma * forget_loss
        logs = {
            "forget_dpo": forget_loss,
            "idk_log_ratio": sequence_mean(win.detach(), rows),
            "forget_log_ratio": sequence_mean(lose.detach(), rows),
        }
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)
