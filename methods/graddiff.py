"""Gradient difference (GradDiff) and GA + KL: ascend on the forget set, hold the retain set in place.

GradDiff: Liu et al., "Continual Learning and Private Unlearning", arXiv 2203.12817; TOFU baselines "Gradient
Difference" and "KL Minimization", arXiv 2401.06121 Sec. 5. Weights follow open-unlearning's GradDiff
(`loss = gamma * forget_loss + alpha * retain_loss`, configs/trainer/GradDiff.yaml: gamma 1, alpha 1).
"""

from __future__ import annotations

import torch

from methods.base import Batch, BatchPart, ReferenceValue, UnlearningMethod, as_float_logs, reference_log_softmax
from methods.hyperparameters import GradDiffHyperparameters, KLHyperparameters
from methods.numerics import (
    forward_logits,
    labelled_rows,
    labelled_token_mean,
    soft_cross_entropy,
    soft_entropy,
    token_denominator,
    token_mean_nll,
)


RETAIN_REFERENCE = reference_log_softmax("retain")


def retain_kl(method: UnlearningMethod, model: torch.nn.Module, retain: BatchPart) -> torch.Tensor:
    """KL(p_ref || p) of the next-token distributions, averaged over the retain batch's labelled positions.

    open-unlearning's `compute_kl_divergence` takes `kl_div(..., reduction="batchmean")` over every flattened
    position, prompt and padding included; we average over the labelled (answer) positions only, like every other
    token-mean in this package, so that padding length does not dilute the term. The reference log-probs are cached
    per example in float16 (they never change; half the memory of float32).
    """
    rows, _ = labelled_rows(forward_logits(model, retain), retain["labels"])
    cached = method.reference_rows(RETAIN_REFERENCE, retain)
    # KL = CE(p_ref, p) - H(p_ref), both over the labelled rows in float32 chunks; the float16 cache is
    # renormalised there (|error| <= 2^-11 |log p|), so p_ref sums to 1 again and the KL stays >= 0.
    kl_per_token = soft_cross_entropy(rows, cached) - soft_entropy(cached)
    return labelled_token_mean(kl_per_token, token_denominator(retain))


class GradDiff(UnlearningMethod):
    """gamma * (-NLL(forget)) + alpha * retain term, the retain term being NLL(retain) or KL(p_ref || p)."""

    name = "graddiff"
    Hyperparameters = GradDiffHyperparameters

    def __init__(self, hparams: GradDiffHyperparameters, reference: torch.nn.Module | None = None) -> None:
        super().__init__(hparams, reference)
        self.retain_loss = getattr(hparams, "retain_loss", "kl")  # `kl` has no such field: its retain term is the KL

    @property
    def reference_values(self) -> tuple[ReferenceValue, ...]:
        return (RETAIN_REFERENCE,) if self.needs_reference else ()

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        forget_nll = token_mean_nll(forward_logits(model, forget), forget["labels"], token_denominator(forget))
        loss = -self.hparams.gamma * forget_nll
        logs = {"forget_nll": forget_nll}
        if self.uses_retain:
            retain = batch["retain"]
            if self.retain_loss == "kl":
                retain_loss = retain_kl(self, model, retain)
            else:
                retain_loss = token_mean_nll(forward_logits(model, retain), retain["labels"], token_denominator(retain))
            loss = loss + self.hparams.alpha * retain_loss
            logs[f"retain_{self.retain_loss}"] = retain_loss
        return loss, as_float_logs(**logs)


class GradAscentKL(GradDiff):
    """TOFU's "KL Minimization": GA on the forget set + alpha * KL(p_ref || p) on the retain set."""

    name = "kl"
    Hyperparameters = KLHyperparameters
