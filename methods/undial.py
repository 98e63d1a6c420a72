"""UnDIAL: self-distillation towards the frozen original model with the true next token's logit pushed down.

Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models",
arXiv 2402.10052, Sec. 3: at every answer position the target is softmax(z_teacher - gamma * onehot(y_t)) and the
student minimises the cross-entropy to it; no retain term, no ascent, so the loss is bounded below.
Differences from the references, on purpose: both dong-river/LLM_unlearning (utils/ft_utils.py `DITrainer`) and
open-unlearning (`compute_undial_loss`) average over *every* position, prompt and padding included (open-unlearning
also indexes the one-hot with the -100 labels, which wraps to vocab - 100); we average over the labelled positions.

The teacher is read once per example before training (`reference_values`), at the labelled positions only: its
whole next-token log-distribution in float16 (2 x vocabulary bytes a token), or, with `teacher_top_k = k`, the
adjusted target at its k likeliest tokens and the true token (8(k + 1) bytes a token: float32 log-probabilities
and ids, ids exact in float32 below 2^24), the rest of its mass spread evenly over the other ids. Spread, not
dropped: once the true token is pushed down, a target model that memorised its forget set leaves most of the mass
in a long flat tail (measured in `benchmarks/step_memory.py`: renormalising over the top 1024 of 32k ids left the
loss 10% off, since 13% of the mass was outside them). Each step logs the mean mass in the tail
(`teacher_tail_mass`); `benchmarks/step_memory.py` measures the loss and gradient error against the whole
vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Batch, BatchPart, ReferenceValue, UnlearningMethod, as_float_logs, reference_log_softmax
from methods.hyperparameters import UnDIALHyperparameters
from methods.numerics import (
    IGNORE_INDEX,
    forward_logits,
    labelled_rows,
    labelled_token_mean,
    masked_token_mean,
    shift_for_next_token,
    soft_cross_entropy,
    token_denominator,
    token_logprobs,
)


def sparse_adjusted_target(logits: torch.Tensor, labels: torch.Tensor, gamma: float, k: int) -> torch.Tensor:
    """`[batch, seq - 1, 2(k + 1)]`: the log-probabilities of softmax(log_softmax(logits) - gamma * onehot(y)) at
    its k likeliest tokens other than y and at y, then those k + 1 ids as floats."""
    shifted, targets = shift_for_next_token(logits, labels)
    true_token = targets.clamp(min=0).unsqueeze(-1)
    adjusted = F.log_softmax(shifted.float(), dim=-1).scatter_add(
        -1, true_token, torch.full(true_token.shape, -gamma, dtype=torch.float32, device=logits.device))
    log_target = F.log_softmax(adjusted, dim=-1)
    top = log_target.scatter(-1, true_token, float("-inf")).topk(min(k, log_target.shape[-1] - 1), dim=-1)
    values = torch.cat([top.values, log_target.gather(-1, true_token)], dim=-1)
    ids = torch.cat([top.indices, true_token], dim=-1)
    return torch.cat([values, ids.float()], dim=-1) * (targets != IGNORE_INDEX).unsqueeze(-1)


def _sparse_teacher(gamma: float, k: int) -> ReferenceValue:
    def compute(logits: torch.Tensor, part: BatchPart) -> torch.Tensor:
        return sparse_adjusted_target(logits, part["labels"], gamma, k)

    return ReferenceValue("forget", f"forget_undial_target_top{k}_gamma{gamma!r}", "token", compute)


class UnDIAL(UnlearningMethod):
    """Cross-entropy of the student to the teacher's distribution with the true token's logit lowered by gamma."""

    name = "undial"
    Hyperparameters = UnDIALHyperparameters
    # The teacher's log-softmax stands in for its logits (softmax is shift-invariant per row, so the target is the
    # same); cached once per example in float16, which bounded log-probs tolerate.
    TEACHER = reference_log_softmax("forget")

    @property
    def teacher(self) -> ReferenceValue:
        k = self.hparams.teacher_top_k
        return self.TEACHER if k is None else _sparse_teacher(self.hparams.gamma, k)

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (self.teacher,)

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        logits = forward_logits(model, forget)
        rows, true_token = labelled_rows(logits, forget["labels"])
        teacher = self.reference_rows(self.teacher, forget)
        logs = {}
        if self.hparams.teacher_top_k is None:
            # arXiv 2402.10052 Sec. 3: target = softmax(z_teacher - gamma * onehot(y_t)), a fixed soft label.
            per_token = soft_cross_entropy(rows, teacher, adjust_index=true_token, adjust=-self.hparams.gamma)
        else:
            kept = teacher.shape[-1] // 2
            log_target, ids = teacher[:, :kept].float(), teacher[:, kept:].long()
            per_token = soft_cross_entropy(rows, log_target, target_index=ids)
        tokens = token_denominator(forget)
        if self.hparams.teacher_top_k is not None:
            logs["teacher_tail_mass"] = labelled_token_mean(1.0 - log_target.exp().sum(dim=-1), tokens)
        loss = labelled_token_mean(per_token, tokens)
        with torch.no_grad():
            log_p, mask = token_logprobs(logits.detach(), forget["labels"])
            true_token_prob = masked_token_mean(log_p.exp(), mask, tokens)
        return loss, as_float_logs(forget_cross_entropy=loss, forget_true_token_prob=true_token_prob, **logs)
