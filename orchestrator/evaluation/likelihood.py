"""Teacher-forced scoring of answers under a causal LM: the one forward pass every likelihood metric reads.

TOFU's probability and truth ratio, the membership-inference attacks and the memorisation metrics all need the same
thing: the log-probabilities the model gives to an answer's tokens after the prompt. This module computes them in
batches (rows sorted by length so little is spent on padding) and hands back plain numpy arrays per example.

Conventions follow open-unlearning (`src/evals/metrics/utils.py`):
- `evaluate_probability` scores every labelled token, the end-of-sequence token included: our `sum_logprob`,
  `num_tokens` and `mean_logprob` (its `avg_loss` is `-mean_logprob`).
- `tokenwise_logprobs` / `tokenwise_vocab_logprobs` drop the final end-of-sequence prediction: our per-token
  `token_logprobs`, `token_correct`, `vocab_mean`, `vocab_std` (the MIA attacks, extraction strength and exact
  memorisation read these). We drop label positions equal to the EOS id rather than "the last labelled token", so
  that an answer truncated by `max_length` keeps its last real token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from methods.numerics import forward_logits, shift_for_next_token, token_logprobs, token_mask
from orchestrator.data.schema import Example
from orchestrator.data.tokenize import EncodedRow, PromptTemplate, collate, encode
from orchestrator.evaluation.realism import top_alternative_mass


@dataclass
class AnswerScores:
    """Per-example scores of one answer per example (all arrays indexed like the input examples)."""

    sum_logprob: np.ndarray  # [n] log p(answer | prompt), EOS included
    num_tokens: np.ndarray  # [n] labelled tokens scored, EOS included
    # Filled only with `details=True`: per-example arrays over the answer tokens, EOS excluded.
    token_logprobs: list[np.ndarray] = field(default_factory=list)
    token_correct: list[np.ndarray] = field(default_factory=list)  # argmax == label under teacher forcing
    vocab_mean: list[np.ndarray] = field(default_factory=list)  # E_{v~p}[log p(v)] at each position (min-k%++)
    vocab_std: list[np.ndarray] = field(default_factory=list)  # its standard deviation
    alt_top_mass: list[np.ndarray] = field(default_factory=list)  # mass of the 10 likeliest non-target tokens
    non_target_mass: list[np.ndarray] = field(default_factory=list)  # 1 - p(label)

    @property
    def mean_logprob(self) -> np.ndarray:
        """Length-normalised log-likelihood, `log P(a|q)^(1/|a|)` (TOFU's probability before the exp)."""
        return self.sum_logprob / np.maximum(self.num_tokens, 1)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def encode_rows(
    tokenizer,
    examples: Sequence[Example],
    template: PromptTemplate,
    max_length: int,
    answers: Sequence[str | None] | None = None,
) -> list[EncodedRow]:
    """Training-layout rows (`prompt + answer + eos`, prompt labelled -100), one per example, `index` = position."""
    if answers is not None and len(answers) != len(examples):
        raise ValueError(f"answers has {len(answers)} entries for {len(examples)} examples")
    return [
        encode(tokenizer, ex, i, template, max_length, answer=None if answers is None else answers[i])
        for i, ex in enumerate(examples)
    ]


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding costs little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_token_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad, else its EOS, else 0 (masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


@torch.no_grad()
def score_answers(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    template: PromptTemplate,
    *,
    answers: Sequence[str | None] | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    details: bool = False,
) -> AnswerScores:
    """Score each example's answer (or `answers[i]` in its place: paraphrase, a perturbation, a refusal).

    `details=True` also returns the per-token quantities of the MIA and memorisation metrics. The caller puts the
    model in eval mode (`evaluate_model` does); this function only disables gradients.
    """
    n = len(examples)
    scores = AnswerScores(sum_logprob=np.zeros(n), num_tokens=np.zeros(n, dtype=np.int64))
    if details:
        empty = np.zeros(0)
        scores.token_logprobs = [empty] * n
        scores.token_correct = [np.zeros(0, dtype=bool)] * n
        scores.vocab_mean = [empty] * n
        scores.vocab_std = [empty] * n
        scores.alt_top_mass = [empty] * n
        scores.non_target_mass = [empty] * n
    if n == 0:
        return scores
    rows = encode_rows(tokenizer, examples, template, max_length, answers)
    device = model_device(model)
    pad = pad_token_id(tokenizer)
    eos = tokenizer.eos_token_id
    for batch_idx in length_sorted_batches([len(r.input_ids) for r in rows], batch_size):
        batch = collate([rows[i] for i in batch_idx], pad)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        labels = batch["labels"].to(device)
        logits = forward_logits(model, inputs)
        logprobs, mask = token_logprobs(logits, labels)
        sums = logprobs.sum(dim=-1).cpu().numpy()
        counts = mask.sum(dim=-1).cpu().numpy()
        for j, i in enumerate(batch_idx):
            scores.sum_logprob[i] = float(sums[j])
            scores.num_tokens[i] = int(counts[j])
        if details:
            _fill_token_details(scores, batch_idx, logits, labels, eos)
    return scores


def _fill_token_details(
    scores: AnswerScores, batch_idx: list[int], logits: torch.Tensor, labels: torch.Tensor, eos: int | None
) -> None:
    """Per-token log p(label), argmax hits, and the vocabulary mean/std of log p, on the answer positions only."""
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    keep = token_mask(shifted_labels).bool()
    if eos is not None:
        keep &= shifted_labels != eos
    # log_softmax over the kept positions alone: prompt and padding positions never enter the [N, V] tensor.
    logp = F.log_softmax(shifted_logits[keep].float(), dim=-1)  # [N, V]
    targets = shifted_labels[keep]
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    correct = logp.argmax(dim=-1) == targets
    # Min-K%++ (Zhang et al. 2024, arXiv 2404.02936) standardises log p(x_t) by the mean and variance of log p(v)
    # for v ~ p(.|x_<t); open-unlearning `mia/min_k_plus_plus.py` computes them the same way.
    # Written to hold at most two [N, V] tensors at once (large vocabularies).
    p = logp.exp()
    alt_top, non_target = top_alternative_mass(p, targets)
    mu = torch.einsum("nv,nv->n", p, logp)
    var = torch.einsum("nv,nv->n", p.mul_(logp), logp) - mu.square()
    std = var.clamp(min=1e-6).sqrt()
    per_row = keep.sum(dim=-1).tolist()
    for name, values in (("token_logprobs", lp), ("token_correct", correct), ("vocab_mean", mu), ("vocab_std", std),
                         ("alt_top_mass", alt_top), ("non_target_mass", non_target)):
        pieces = torch.split(values.cpu(), per_row)
        target = getattr(scores, name)
        for j, i in enumerate(batch_idx):
            target[i] = pieces[j].numpy().astype(bool if name == "token_correct" else np.float64)


def score_alternatives(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    template: PromptTemplate,
    alternatives: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    max_length: int = 512,
) -> list[np.ndarray]:
    """Length-normalised log-likelihood of other answers to each example's prompt (paraphrases, perturbations).

    `alternatives[i]` lists the answers to score for `examples[i]`; the result holds one array per example in the
    same order (empty where none). All of them go through one batched pass.
    """
    if len(alternatives) != len(examples):
        raise ValueError(f"alternatives has {len(alternatives)} entries for {len(examples)} examples")
    flat_examples: list[Example] = []
    flat_answers: list[str] = []
    owner: list[int] = []
    for i, (ex, answers) in enumerate(zip(examples, alternatives)):
        for answer in answers:
            flat_examples.append(ex)
            flat_answers.append(answer)
            owner.append(i)
    scores = score_answers(
        model, tokenizer, flat_examples, template, answers=flat_answers, batch_size=batch_size, max_length=max_length
    )
    out: list[list[float]] = [[] for _ in examples]
    for k, i in enumerate(owner):
        out[i].append(float(scores.mean_logprob[k]))
    return [np.asarray(values, dtype=np.float64) for values in out]
