"""Inverted hinge loss (IHL), alone or on FILA-initialised LoRA adapters (`ihl_fila`).

Cha et al., "Towards Robust and Parameter-Efficient Knowledge Unlearning for LLMs", arXiv 2408.06621 (IHL, Sec. 3):
per forget token, max(0, 1 + p(y_t) - max_{v != y_t} p(v)): lower the true token only until another token overtakes
it, instead of GA's unbounded push. Reference code csm9493/efficient-llm-unlearning TOFU/dataloader.py (`IHL`):
softmax over the vocabulary, Crammer-Singer margin, mean over the labelled tokens, `loss = forget_loss +
retain_loss` (retain = HF token-mean NLL), i.e. retain weight 1.
"""

from __future__ import annotations

from typing import Iterable

import torch

from methods.base import Batch, BatchPart, UnlearningMethod, as_float_logs
from methods.fila import fila_initialise
from methods.hyperparameters import IHLFILAHyperparameters, IHLHyperparameters
import methods.numerics as numerics
from methods.numerics import forward_logits, labelled_rows, labelled_token_mean, token_denominator


def inverted_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token IHL at the labelled positions, `[n]` in `labelled_rows`' order.

    1 + p(y) - max_{v != y} p(v) lies in [0, 2] for any distribution (both probabilities are in [0, 1]), so the
    paper's max(0, .) never binds and is left out; the value is 0 only when p(y) = 0 and another token has p = 1.
    Computed `LABEL_CHUNK` rows at a time in float32, the backward recomputing each chunk's softmax: no float32
    `[n, vocab]` tensor is kept.
    """
    rows, true_token = labelled_rows(logits, labels)
    return _InvertedHinge.apply(rows, true_token)


def _hinge_parts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """softmax, p(y), and the likeliest other token and its probability, for one chunk."""
    probs = torch.softmax(numerics.at_least_float32(logits), dim=-1)
    true_prob = probs.gather(-1, labels.unsqueeze(-1))
    # Probabilities are >= 0, so zeroing the true token's entry leaves the max over the other tokens.
    best_other_prob, best_other = probs.scatter(-1, labels.unsqueeze(-1), 0.0).max(dim=-1, keepdim=True)
    return probs, true_prob, best_other, best_other_prob


class _InvertedHinge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels):
        out = []
        for chunk, chunk_labels in zip(logits.split(numerics.LABEL_CHUNK), labels.split(numerics.LABEL_CHUNK)):
            _, true_prob, _, best_other_prob = _hinge_parts(chunk, chunk_labels)
            out.append((1.0 + true_prob - best_other_prob).squeeze(-1))
        ctx.save_for_backward(logits, labels)
        return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, labels = ctx.saved_tensors
        chunks = []
        for start in range(0, logits.shape[0], numerics.LABEL_CHUNK):
            rows = slice(start, start + numerics.LABEL_CHUNK)
            y = labels[rows].unsqueeze(-1)
            probs, true_prob, best_other, best_other_prob = _hinge_parts(logits[rows], labels[rows])
            # d p_i / dz = p_i (e_i - p): d(p_y - p_m)/dz = -(p_y - p_m) p + p_y e_y - p_m e_m
            local = probs * (best_other_prob - true_prob)
            local = local.scatter_add(-1, y, true_prob).scatter_add(-1, best_other, -best_other_prob)
            chunks.append((local * grad[rows].unsqueeze(-1)).to(logits.dtype))
        return (torch.cat(chunks) if chunks else torch.zeros_like(logits)), None


class InvertedHingeLoss(UnlearningMethod):
    """IHL(forget), token-mean over the forget batch, + alpha * NLL(retain)."""

    name = "ihl"
    Hyperparameters = IHLHyperparameters

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        forget = batch["forget"]
        per_token = inverted_hinge(forward_logits(model, forget), forget["labels"])
        forget_ihl = labelled_token_mean(per_token, token_denominator(forget))
        loss = forget_ihl
        logs = {"forget_ihl": forget_ihl}
        loss = self.add_retain_nll(model, batch, loss, logs)
        return loss, as_float_logs(**logs)


class InvertedHingeLossFILA(InvertedHingeLoss):
    """IHL trained through LoRA adapters that FILA initialises from the forget/retain Fisher information."""

    name = "ihl_fila"
    Hyperparameters = IHLFILAHyperparameters

    def init_adapters(
        self, model: torch.nn.Module, forget_batches: Iterable[BatchPart], retain_batches: Iterable[BatchPart]
    ) -> torch.nn.Module:
        return fila_initialise(
            model,
            forget_batches,
            retain_batches,
            rank=self.hparams.rank,
            lora_alpha=self.hparams.lora_alpha,
            target_modules=self.hparams.target_modules,
        )
