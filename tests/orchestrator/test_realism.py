"""alt_mass_top10: the share of the non-target mass on the 10 likeliest alternatives, on hand-built distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator.evaluation.realism import alternative_mass_share, top_alternative_mass


def test_concentrated_and_flat_distributions():
    vocab = 100
    # Position 0: p(target=0) = 0.5; the other 0.5 sits on tokens 1..5 (0.1 each): the top 10 hold all of it.
    concentrated = torch.zeros(vocab)
    concentrated[0] = 0.5
    concentrated[1:6] = 0.1
    # Position 1: p(target=7) = 0.01; the other 0.99 is spread evenly over 99 tokens: top 10 hold 10/99 of it.
    flat = torch.full((vocab,), 0.01)
    top, rest = top_alternative_mass(torch.stack([concentrated, flat]), torch.tensor([0, 7]))
    assert top.tolist() == pytest.approx([0.5, 0.10])
    assert rest.tolist() == pytest.approx([0.5, 0.99])
    # Pooled: (0.5 + 0.1) / (0.5 + 0.99); each alone: 1 and 10/99.
    assert alternative_mass_share([top[:1].numpy()], [rest[:1].numpy()]) == pytest.approx(1.0)
    assert alternative_mass_share([top[1:].numpy()], [rest[1:].numpy()]) == pytest.approx(10 / 99, rel=1e-5)
    assert alternative_mass_share([top.numpy()], [rest.numpy()]) == pytest.approx(0.6 / 1.49, rel=1e-5)


def test_target_among_the_likeliest_is_excluded():
    # The target is the argmax; the runner-ups 0.2, 0.1 and 0.05 each, the rest 0.05 over 95 tokens.
    probs = torch.full((100,), 0.05 / 95)
    probs[3], probs[10], probs[11], probs[12] = 0.6, 0.2, 0.1, 0.05
    top, rest = top_alternative_mass(probs[None], torch.tensor([3]))
    assert float(rest) == pytest.approx(0.4)
    assert float(top) == pytest.approx(0.35 + 7 * 0.05 / 95, rel=1e-5)


def test_label_smoothing_shape_is_unrealistic():
    # A label-smoothed model: 0.9 on the target, 0.1 spread over the other 1023 tokens.
    vocab = 1024
    probs = torch.full((4, vocab), 0.1 / (vocab - 1))
    probs[torch.arange(4), torch.arange(4)] = 0.9
    top, rest = top_alternative_mass(probs, torch.arange(4))
    assert alternative_mass_share([top.numpy()], [rest.numpy()]) == pytest.approx(10 / 1023, rel=1e-4)


def test_no_positions_and_bad_shapes():
    assert alternative_mass_share([np.zeros(0)], [np.zeros(0)]) is None
    with pytest.raises(ValueError, match="expected probs"):
        top_alternative_mass(torch.ones(3), torch.zeros(3, dtype=torch.long))
