"""methods.numerics.next_token_log_softmax: the shifted full-vocabulary log-distribution (KL, UnDIAL, IHL)."""

from __future__ import annotations

import torch

from methods.numerics import next_token_log_softmax, token_logprobs


class TestNextTokenLogSoftmax:
    def test_shift_mask_and_agreement_with_token_logprobs(self):
        """Row t of the result predicts labels[t + 1]; gathering the labels gives `token_logprobs` exactly."""
        torch.manual_seed(0)
        logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
        labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
        log_probs, mask = next_token_log_softmax(logits, labels)
        assert log_probs.shape == (2, 4, 7) and log_probs.dtype == torch.float32
        assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 0, 0]]
        torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 4))
        gathered = log_probs.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        expected, expected_mask = token_logprobs(logits, labels)
        torch.testing.assert_close(gathered, expected)
        torch.testing.assert_close(mask, expected_mask)
