"""UnDIAL: self-distillation towards the frozen original model with the true next token's logit pushed down.

Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
arXiv 2402.10052, Sec. 3: at every answer position the target is softmax(z_teacher - gamma * onehot(y_t)) and the
student minimises the cross-entropy to it; no retain term, no ascent, so the loss is bounded below.
Differences from the references, on purpose: both dong-river/LLM_unlearning (utils/ft_utils.py `DITrainer`) and
open-unlearning (`compute_undial_loss`) average over *every* position, prompt and padding included (open-unlearning
also indexes the one-hot with the -100 labels, which wraps to vocab - 100); we average over the labelled positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, ReferenceValue, UnlearningMethod, as_float_logs, reference_log_softmax
from methods.hyperparameters import UnDIALHyperparameters
from methods.numerics import (
    forward_logits,
    masked_token_mean,
    next_token_log_softmax,
    shift_for_next_token,
    token_denominator,
)


class UnDIAL(UnlearningMethod):
    """Cross-entropy of the student to the teacher's distribution with the true token's logit lowered by gamma."""

    name = "undial"
    Hyperparameters = UnDIALHyperparameters
    # The teacher's log-softmax stands in for its logits (softmax is shift-invariant per row, so the target is the
    # same); cached once per example in float16, which bounded log-probs tolerate.
    TEACHER = reference_log_softmax("forget")

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (self.TEACHER,)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        logits = forward_logits(model, forget)
        log_p, mask = next_token_log_softmax(logits, forget["labels"])
        true_token = shift_for_next_token(logits, forget["labels"])[1].clamp(min=0).unsqueeze(-1)
        teacher_log_p = self.reference_value(self.TEACHER, forget)
        # arXiv 2402.10052 Sec. 3: target = softmax(z_teacher - gamma * onehot(y_t)), a fixed soft label.
        penalty = torch.full_like(true_token, -self.hparams.gamma, dtype=teacher_log_p.dtype)
        target = F.softmax(teacher_log_p.scatter_add(-1, true_token, penalty), dim=-1)
        tokens = token_denominator(forget)
        loss = masked_token_mean(-(target * log_p).sum(dim=-1), mask, tokens)
        true_token_prob = masked_token_mean(log_p.detach().gather(-1, true_token).squeeze(-1).exp(), mask, tokens)
        return loss, as_float_logs(forget_cross_entropy=loss, forget_true_token_prob=true_token_prob)
