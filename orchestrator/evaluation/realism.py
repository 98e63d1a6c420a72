"""How much the model's output distribution looks like a real fine-tuned LM's: `alt_mass_top10`.

At an answer position a real fine-tuned model gives most of the probability it does not give the true token to a
few plausible alternatives (other cities, other years); a tiny model trained from scratch with label smoothing
spreads it evenly over the vocabulary. Methods that reshape the distribution (UnDIAL's adjusted logits, IHL's
runner-up token) behave differently in the two cases, so the evaluation reports, for every model, the share of the
non-target mass that the k most likely alternatives hold. A user compares the figure of the embedded stand-in with
the one of their own model.

The share is pooled over positions (sum of top-k alternative mass over sum of non-target mass), so positions where
the model is unsure, the facts, weigh more than template tokens it predicts with near certainty, whose tiny
remainder says little about what the model believes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

TOP_K = 10


def top_alternative_mass(probs: torch.Tensor, targets: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position: the mass of the k most likely tokens other than the target, and the whole non-target mass.

    `probs` is `[N, V]` (rows sum to 1), `targets` `[N]`. Both results are `[N]`.
    """
    if probs.dim() != 2 or targets.shape != probs.shape[:1]:
        raise ValueError(f"expected probs [N, V] and targets [N], got {tuple(probs.shape)} and {tuple(targets.shape)}")
    target_mass = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    others = probs.scatter(-1, targets.unsqueeze(-1), 0.0)
    top = others.topk(min(k, probs.size(-1) - 1), dim=-1).values.sum(dim=-1)
    return top, (1.0 - target_mass).clamp(min=0.0)


def alternative_mass_share(top: Sequence[np.ndarray], non_target: Sequence[np.ndarray]) -> float | None:
    """Pooled share `sum(top) / sum(non_target)` over all positions of all examples; None without positions."""
    total_top = float(sum(np.sum(t) for t in top))
    total_rest = float(sum(np.sum(r) for r in non_target))
    if total_rest <= 0.0:
        return None
    return total_top / total_rest
