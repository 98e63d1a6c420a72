"""What ICU's refinement measures: greedy continuations and how much of the true answer they still reproduce.

- `greedy_continuations`: batched, left-padded greedy decoding with the KV cache, for any HF causal LM (falls back to
  re-running the whole prefix when a model returns no cache).
- `sentence_bleu`: token-level BLEU-4 with "method1" smoothing (Chen & Cherry 2014: a zero n-gram match count
  becomes 0.1). ICU's code calls NLTK's unsmoothed `sentence_bleu` on words, which is 0 as soon as one order has no
  match; smoothing keeps the score graded, and the 0.01 threshold still drops a continuation with no n-gram overlap
  beyond unigrams.
- `token_f1` / `rouge_l_f1`: offline substitutes for BERTScore-F1 (ICU code, `bert-base-uncased`), which needs a
  downloaded BERT. Token F1 is BERTScore's greedy matching (Zhang et al., arXiv 1904.09675) with exact-token
  identity in place of embedding cosine similarity; ROUGE-L adds word order.
- `memorisation_accuracy` (MA) and `extraction_likelihood` (EL_n): the definitions of Jang et al., arXiv 2210.01504
  (ICU's `validation_ma` / `validation_el`), over the answer tokens of prompt/answer pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch

from methods.base import ForgetSample


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_token_id(model: torch.nn.Module) -> int:
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return int(pad) if pad is not None else 0


@torch.no_grad()
def greedy_continuations(
    model: torch.nn.Module,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: Sequence[int],
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Greedy continuation of each 1-D prompt, `max_new_tokens[i]` tokens long (no early stop at EOS), on the CPU."""
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        out: list[torch.Tensor | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            generated = _greedy_batch(model, [prompts[i] for i in rows], max(max_new_tokens[i] for i in rows))
            for row, i in enumerate(rows):
                out[i] = generated[row, : max_new_tokens[i]].cpu()
        return out  # type: ignore[return-value]
    finally:
        model.train(was_training)


def _greedy_batch(model: torch.nn.Module, prompts: list[torch.Tensor], steps: int) -> torch.Tensor:
    device, batch = _device(model), len(prompts)
    if steps <= 0:
        return torch.zeros(batch, 0, dtype=torch.long)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((batch, width), _pad_token_id(model), dtype=torch.long, device=device)
    attention_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):  # left padding: every row's next token is at the last position
        if len(prompt):
            input_ids[row, width - len(prompt) :] = prompt.to(device)
            attention_mask[row, width - len(prompt) :] = 1
    tokens, past, step_ids = [], None, input_ids
    for _ in range(steps):
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        kwargs = {"past_key_values": past} if past is not None else {}
        output = model(
            input_ids=step_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **kwargs
        )
        next_token = output.logits[:, -1, :].argmax(dim=-1)
        tokens.append(next_token)
        past = getattr(output, "past_key_values", None)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        input_ids = torch.cat([input_ids, next_token[:, None]], dim=1)
        step_ids = next_token[:, None] if past is not None else input_ids
    return torch.stack(tokens, dim=1)


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sentence_bleu(candidate: Sequence[int], reference: Sequence[int], max_n: int = 4, epsilon: float = 0.1) -> float:
    """BLEU of one token sequence against one reference: clipped n-gram precisions, uniform weights up to `max_n`,
    zero counts smoothed to `epsilon` (NLTK SmoothingFunction.method1), brevity penalty exp(1 - r/c) when c < r."""
    if not candidate or not reference:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        cand, ref = Counter(_ngrams(candidate, n)), Counter(_ngrams(reference, n))
        matches = sum(min(count, ref[gram]) for gram, count in cand.items())
        total = max(1, sum(cand.values()))  # NLTK: denominator at least 1 when the candidate is shorter than n
        log_precision += math.log((matches if matches > 0 else epsilon) / total) / max_n
    c, r = len(candidate), len(reference)
    brevity = 1.0 if c >= r else math.exp(1.0 - r / c)
    return brevity * math.exp(log_precision)


def token_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """Harmonic mean of token precision and recall over the multiset of shared tokens."""
    common = sum((Counter(candidate) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l_f1(candidate: Sequence[int], reference: Sequence[int]) -> float:
    """ROUGE-L F1: longest common subsequence against both lengths."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for c in candidate:
        current = [0]
        for j, r in enumerate(reference):
            current.append(previous[j] + 1 if c == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def memorisation_accuracy(model: torch.nn.Module, samples: Sequence[ForgetSample], batch_size: int = 32) -> float:
    """Mean over samples of the fraction of answer tokens that are the argmax next token given the true prefix.

    Jang et al., arXiv 2210.01504 (MA): teacher-forced, as ICU's `validation_ma` (which asks `generate` for one
    token after each true prefix). Over the answer only, where ICU's corpus has no prompt/answer split.
    """
    was_training = model.training
    model.eval()
    try:
        device, scores = _device(model), []
        for start in range(0, len(samples), batch_size):
            chunk = [s for s in samples[start : start + batch_size] if len(s.answer_ids)]
            if not chunk:
                continue
            rows = [torch.cat([s.prompt_ids, s.answer_ids]) for s in chunk]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), _pad_token_id(model), dtype=torch.long)
            attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, row in enumerate(rows):  # right padding: positions of real tokens are unaffected
                input_ids[i, : len(row)], attention_mask[i, : len(row)] = row, 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            predicted = logits.argmax(dim=-1).cpu()
            for i, s in enumerate(chunk):
                first = len(s.prompt_ids)
                if first > 0:  # logits at t - 1 predict token t
                    guess = predicted[i, first - 1 : first - 1 + len(s.answer_ids)]
                else:  # no prompt: the first answer token has no prediction and counts as a miss
                    guess = torch.cat([torch.full((1,), -1), predicted[i, : len(s.answer_ids) - 1]])
                scores.append((guess == s.answer_ids).float().mean().item())
        return sum(scores) / len(scores) if scores else 0.0
    finally:
        model.train(was_training)


def extraction_likelihood(
    model: torch.nn.Module, samples: Sequence[ForgetSample], n: int = 10, batch_size: int = 32
) -> float:
    """EL_n (Jang et al., arXiv 2210.01504): mean over cut points t of the share of the true remainder's
    n-grams that greedy decoding from prompt + answer[:t] reproduces, averaged over samples.

    Cuts run over the answer, t = 0 .. A - n (ICU `validation_el` cuts the last 50 of 200 tokens and, like here,
    counts only cuts that leave at least n true tokens). n is capped at the answer length A so a short answer still
    has one cut (t = 0) where EL is whether the whole answer comes back.
    """
    jobs: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []  # (sample, prefix, true remainder, n)
    for k, s in enumerate(samples):
        length = len(s.answer_ids)
        if length == 0:
            continue
        n_eff = min(n, length)
        for t in range(0, length - n_eff + 1):
            jobs.append((k, torch.cat([s.prompt_ids, s.answer_ids[:t]]), s.answer_ids[t:], n_eff))
    if not jobs:
        return 0.0
    generated = greedy_continuations(model, [j[1] for j in jobs], [len(j[2]) for j in jobs], batch_size)
    per_sample: dict[int, list[float]] = {}
    for (k, _, truth, n_eff), pred in zip(jobs, generated):
        true_ngrams = _ngrams(truth.tolist(), n_eff)
        unique = set(true_ngrams)
        hits = sum(1 for gram in _ngrams(pred.tolist(), n_eff) if gram in unique)
        per_sample.setdefault(k, []).append(hits / len(true_ngrams))
    scores = [sum(v) / len(v) for v in per_sample.values()]
    return sum(scores) / len(scores)
