"""Cross-entropy unlearning (CE-U): cross-entropy to the model's own next-token distribution with the true token removed.

Yang et al., "CE-U: Cross Entropy Unlearning", arXiv 2503.01224: at each forget token, the target is
q = softmax(sg(z) with z_y set to -inf), the model's current distribution renormalised over every token but the true
one y; the loss is CE(q, p) = -sum_v q_v log p_v, averaged over the labelled tokens. Its gradient on the logits is
p - q, bounded, which pushes p_y to 0 without gradient ascent's blow-up; no retain term. As open-unlearning
src/trainer/unlearn/ceu.py (`cross_entropy_unlearning_loss`, `compute_batch_ceu`) and configs/trainer/CEU.yaml: the
first answer token of each row is left out (the paper's footnote in its training settings), and the mean is over the
remaining labelled tokens of the batch. Split over workers, the global count of those is the loop's global token count
less n per row (exact whenever every row has at least n labelled tokens, as every answer ending in EOS has for
n <= 1), so no collective is needed. We build q from float32 logits (the reference uses the model's dtype).
"""

from __future__ import annotations

import torch

from methods.base import Batch, UnlearningMethod, as_float_logs
from methods.hyperparameters import CEUHyperparameters
from methods.numerics import (
    IGNORE_INDEX,
    forward_logits,
    labelled_rows,
    labelled_token_mean,
    sequence_denominator,
    soft_cross_entropy,
    token_denominator,
)


def without_first_answer_tokens(labels: torch.Tensor, n: int) -> torch.Tensor:
    """`labels` with each row's first `n` labelled tokens set to -100 (open-unlearning `compute_batch_ceu`)."""
    labelled = labels != IGNORE_INDEX
    return labels.masked_fill(labelled & (labelled.cumsum(dim=-1) <= n), IGNORE_INDEX)


def cross_entropy_unlearning(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token CE(q, p) at the labelled positions, `[n]` in `labelled_rows`' order: q is the model's own
    (detached) distribution with the true token's logit at -inf, in float32 chunks (`soft_cross_entropy`)."""
    rows, true_token = labelled_rows(logits, labels)
    return soft_cross_entropy(rows, rows.detach(), adjust_index=true_token, adjust=float("-inf"))


class CEU(UnlearningMethod):
    """CE-U(forget), token-mean over the forget batch's labelled tokens but each row's first few."""

    name = "ceu"
    Hyperparameters = CEUHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        labels = without_first_answer_tokens(forget["labels"], self.hparams.ignore_first_n_answer_tokens)
        per_token = cross_entropy_unlearning(forward_logits(model, forget), labels)
        n = self.hparams.ignore_first_n_answer_tokens
        tokens, rows = token_denominator(forget), sequence_denominator(forget)
        # This worker's share of the global count of the tokens left in (None on one process: its own count); with
        # no token left anywhere the sum is 0 and the clamp only avoids 0 / 0.
        kept = None if tokens is None or rows is None else (tokens - n * rows).clamp(min=1e-6)
        forget_ceu = labelled_token_mean(per_token, kept)
        return forget_ceu, as_float_logs(forget_ceu=forget_ceu)
