"""Shared numerics for every unlearning loss: shifted token log-probs and their reductions.

Every loss in `methods/` goes through these helpers so that masking (-100 labels), the next-token shift and the
reductions are written once and tested once. Conventions follow HF causal LMs: `labels[t]` is the token that
position `t` must produce, so logits at position `t - 1` predict it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align `logits[:, t]` with `labels[:, t + 1]`; returns (logits[:, :-1], labels[:, 1:])."""
    return logits[:, :-1, :], labels[:, 1:]


def token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Float mask of the positions that carry a label (not -100)."""
    return (labels != IGNORE_INDEX).to(torch.float32)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) after the next-token shift.

    Returns `(logprobs, mask)`, both `[batch, seq - 1]`; masked positions hold 0 in `logprobs`.
    Uses gather on log_softmax in float32 so that bf16 logits do not lose the small differences NPO relies on.
    """
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    mask = token_mask(shifted_labels)
    safe_labels = shifted_labels.clamp(min=0)
    logprobs = torch.gather(
        F.log_softmax(shifted_logits.float(), dim=-1), dim=-1, index=safe_labels.unsqueeze(-1)
    ).squeeze(-1)
    return logprobs * mask, mask


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs per sequence, `[batch]` (NPO's and DPO's log p(y|x))."""
    logprobs, _ = token_logprobs(logits, labels)
    return logprobs.sum(dim=-1)


def sequence_mean_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-prob per sequence, `[batch]` (SimNPO; the truth ratio)."""
    logprobs, mask = token_logprobs(logits, labels)
    return logprobs.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def token_mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood averaged over every labelled token in the batch (HF's `model(...).loss`)."""
    logprobs, mask = token_logprobs(logits, labels)
    return -logprobs.sum() / mask.sum().clamp(min=1.0)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a per-token quantity over the labelled tokens of the whole batch."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def forward_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a causal LM on one batch part (`input_ids`, `attention_mask`) and return its logits."""
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def next_token_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full next-token log-distribution after the shift, for losses that need every vocabulary entry (KL, UnDIAL, IHL).

    Returns `(log_probs [batch, seq - 1, vocab]` in float32, `mask [batch, seq - 1])`; callers reduce with `mask`.
    """
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    return F.log_softmax(shifted_logits.float(), dim=-1), token_mask(shifted_labels)
