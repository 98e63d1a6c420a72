"""log p(label) at the labelled positions only, in chunks (methods/numerics.py `token_logprobs`): the same values,
gradients and second derivatives as the float32 log_softmax over every position that it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import methods.numerics as numerics
from methods.numerics import IGNORE_INDEX, at_least_float32, token_logprobs, token_mean_nll


def full_vocabulary_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulation it replaces: a float32 log_softmax over [batch, seq - 1, vocab], then the gather."""
    shifted, targets = logits[:, :-1, :], labels[:, 1:]
    mask = (targets != IGNORE_INDEX).float()
    picked = torch.gather(F.log_softmax(at_least_float32(shifted), dim=-1), -1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def _problem(dtype: torch.dtype, seed: int = 0, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(4, 9, vocab, generator=g)).to(dtype).requires_grad_(True)
    labels = torch.randint(0, vocab, (4, 9), generator=g)
    labels[:, :3] = IGNORE_INDEX  # a prompt
    labels[1, 6:] = IGNORE_INDEX  # padding
    labels[2] = IGNORE_INDEX  # a row with no labels at all
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])  # both reduce in >= float32
@pytest.mark.parametrize("chunk", [1024, 4, 7])  # 7 does not divide the 13 labelled positions
def test_values_and_gradients_equal_the_full_vocabulary_formulation(dtype, chunk, monkeypatch):
    monkeypatch.setattr(numerics, "LABEL_CHUNK", chunk)
    logits, labels = _problem(dtype)
    new, mask = token_logprobs(logits, labels)
    (new_grad,) = torch.autograd.grad((new * torch.arange(new.numel()).view_as(new)).sum(), logits)
    old, old_mask = full_vocabulary_logprobs(logits, labels)
    (old_grad,) = torch.autograd.grad((old * torch.arange(old.numel()).view_as(old)).sum(), logits)
    assert torch.equal(mask, old_mask) and new.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    # Gradients in the logits' dtype: to 1e-6 relative in float32; bf16 rounds each entry (8 bits of mantissa).
    rtol = 1e-6 if dtype != torch.bfloat16 else 1e-2
    torch.testing.assert_close(new_grad.double(), old_grad.double(), rtol=rtol, atol=rtol * old_grad.abs().max().item())
    assert new[2].abs().sum() == 0  # the unlabelled row


def test_an_all_unlabelled_batch_gives_zeros_and_a_zero_gradient():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), IGNORE_INDEX)
    values, mask = token_logprobs(logits, labels)
    assert values.abs().sum() == 0 and mask.sum() == 0
    values.sum().backward()
    assert logits.grad is None or logits.grad.abs().sum() == 0


def test_second_derivatives_go_through_it():
    """OFMU differentiates gradients of the NLL: the Hessian-vector product matches the full formulation's."""
    logits, labels = _problem(torch.float64, seed=1, vocab=13)
    vector = torch.randn_like(logits)

    def hvp(nll) -> torch.Tensor:
        (grad,) = torch.autograd.grad(nll, logits, create_graph=True)
        (product,) = torch.autograd.grad((grad * vector).sum(), logits)
        return product

    new = hvp(token_mean_nll(logits, labels))
    old_values, old_mask = full_vocabulary_logprobs(logits, labels)
    old = hvp(-(old_values.sum() / old_mask.sum()))
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-8)
