"""Shared numerics for every unlearning loss: shifted token log-probs and their reductions.

Every loss in `methods/` goes through these helpers so that masking (-100 labels), the next-token shift and the
reductions are written once and tested once. Conventions follow HF causal LMs: `labels[t]` is the token that
position `t` must produce, so logits at position `t - 1` predict it.

Means over a batch that is split across workers (after OpenRLHF `openrlhf/models/loss.py`, `aggregate_loss`): a mean
is a sum divided by a count, and on N workers whose gradients the engine averages, worker i must return
`sum_i / (count / N)`, `count` being the *global* batch's, so that the average of the workers' values (and of their
gradients) is the global mean whatever the split. The training loop all-reduces each part's counts
(`batch_counts`) and stores the per-worker denominators in the parts (`with_denominators`); every mean below uses
them where present and the part's own count otherwise, so a method used on one process needs nothing of this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Optional 0-d tensors in a batch part, set by the training loop: the global batch's labelled tokens (after the shift)
# and rows of this part, each divided by the number of workers whose gradients are averaged.
TOKENS_PER_WORKER = "tokens_per_worker"
SEQUENCES_PER_WORKER = "sequences_per_worker"


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """float32, or float64 where the tensor already is: the precision the losses reduce in."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align `logits[:, t]` with `labels[:, t + 1]`; returns (logits[:, :-1], labels[:, 1:])."""
    return logits[:, :-1, :], labels[:, 1:]


def token_mask(labels: torch.Tensor) -> torch.Tensor:
    """Float mask of the positions that carry a label (not -100)."""
    return (labels != IGNORE_INDEX).to(torch.float32)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) after the next-token shift.

    Returns `(logprobs, mask)`, both `[batch, seq - 1]`; masked positions hold 0 in `logprobs`.
    Computed at the labelled positions only, `LABEL_CHUNK` rows at a time in float32 (`_LabelLogprob`), so that
    neither the prompt's and padding's positions nor a float32 copy of the whole `[batch, seq, vocab]` logits are
    ever materialised; float32 so that bf16 logits do not lose the small differences NPO relies on.
    """
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    mask = token_mask(shifted_labels)
    labelled = shifted_labels != IGNORE_INDEX
    logprobs = at_least_float32(shifted_logits[..., 0] * 0)  # zeros, in the graph even where nothing is labelled
    if bool(labelled.any()):
        logprobs = logprobs.masked_scatter(labelled, _LabelLogprob.apply(shifted_logits[labelled],
                                                                         shifted_labels[labelled]))
    return logprobs, mask


LABEL_CHUNK = 256  # labelled positions per float32 softmax in `_LabelLogprob` ([chunk, vocab] floats at a time)


class _LabelLogprob(torch.autograd.Function):
    """log softmax(logits)[label] for `[n, vocab]` rows: the forward keeps no float32 `[n, vocab]` tensor, the
    backward recomputes each chunk's softmax (d/dlogits = onehot(label) - softmax), in the logits' dtype. Written
    with differentiable operations, so that double backward (OFMU's Hessian-vector products) goes through it."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normaliser = torch.cat([torch.logsumexp(at_least_float32(chunk), dim=-1) for chunk in logits.split(LABEL_CHUNK)])
        picked = at_least_float32(logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1))
        ctx.save_for_backward(logits, labels)
        return picked - normaliser

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, labels = ctx.saved_tensors
        chunks = []
        for start in range(0, logits.shape[0], LABEL_CHUNK):
            rows = slice(start, start + LABEL_CHUNK)
            # -grad * softmax, plus grad at the label: one [chunk, vocab] tensor; the softmax from the logits, so
            # that it has a derivative itself.
            local = -grad[rows].unsqueeze(-1) * torch.softmax(at_least_float32(logits[rows]), dim=-1)
            local = local.scatter_add(-1, labels[rows].unsqueeze(-1), grad[rows].unsqueeze(-1).to(local.dtype))
            chunks.append(local.to(logits.dtype))
        return torch.cat(chunks), None


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs per sequence, `[batch]` (NPO's and DPO's log p(y|x))."""
    logprobs, _ = token_logprobs(logits, labels)
    return logprobs.sum(dim=-1)


def sequence_mean_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-prob per sequence, `[batch]` (SimNPO; the truth ratio)."""
    logprobs, mask = token_logprobs(logits, labels)
    return logprobs.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def token_mean_nll(
    logits: torch.Tensor, labels: torch.Tensor, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Negative log-likelihood averaged over every labelled token in the batch (HF's `model(...).loss`).

    `denominator`: the part's `tokens_per_worker` (see `token_denominator`); None divides by this batch's count.
    """
    logprobs, mask = token_logprobs(logits, labels)
    return -_divide(logprobs.sum(), mask.sum(), denominator)


def masked_token_mean(
    values: torch.Tensor, mask: torch.Tensor, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of a per-token quantity over the labelled tokens of the whole batch (`denominator` as in token_mean_nll)."""
    return _divide((values * mask).sum(), mask.sum(), denominator)


def labelled_token_mean(values: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-token quantity given at the labelled positions only, `[n]` (`labelled_rows`' order)
    (`denominator` as in token_mean_nll)."""
    return _divide(values.sum(), torch.tensor(float(values.shape[0]), device=values.device), denominator)


def sequence_mean(values: torch.Tensor, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-sequence quantity `[batch]` over the batch's rows (NPO, DPO, SimNPO).

    `denominator`: the part's `sequences_per_worker` (see `sequence_denominator`); None divides by this batch's rows.
    """
    return _divide(values.sum(), torch.tensor(float(values.shape[0]), device=values.device), denominator)


def _divide(total: torch.Tensor, local_count: torch.Tensor, denominator: torch.Tensor | None) -> torch.Tensor:
    if denominator is None:
        denominator = local_count.clamp(min=1.0)
    return total / denominator.to(device=total.device, dtype=total.dtype)


# --- global denominators: what the training loop hands every mean when the batch is split across workers ------
def token_denominator(part: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The denominator of this worker's share of a token mean over `part`, or None (one process: its own count)."""
    return part.get(TOKENS_PER_WORKER)


def sequence_denominator(part: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The denominator of this worker's share of a mean over `part`'s sequences, or None (its own row count)."""
    return part.get(SEQUENCES_PER_WORKER)


def batch_counts(batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
    """`[parts, 2]` float64 (labelled tokens after the shift, rows) of each part, parts in sorted name order.

    The loop sums this over workers (one all-reduce) and hands the sum to `with_denominators`.
    """
    rows = []
    for name in sorted(batch):
        labels = batch[name]["labels"]
        tokens = token_mask(shift_for_next_token(labels.unsqueeze(-1), labels)[1]).sum()
        rows.append(torch.stack([tokens.double(), torch.tensor(float(labels.shape[0]), dtype=torch.float64,
                                                                device=labels.device)]))
    return torch.stack(rows)


def with_denominators(
    batch: dict[str, dict[str, torch.Tensor]], global_counts: torch.Tensor, workers: int
) -> dict[str, dict[str, torch.Tensor]]:
    """A copy of `batch` whose parts carry `tokens_per_worker` and `sequences_per_worker`.

    `global_counts`: `batch_counts` summed over the `workers` workers. A count is clamped to 1 before the division
    (as the local means clamp theirs), so an all-padding part gives 0, not a division by zero. Float32: exact for
    counts below 2^24, and the dtype of the sums they divide.
    """
    per_worker = (global_counts.clamp(min=1.0) / workers).float()
    out = {}
    for name, (tokens, sequences) in zip(sorted(batch), per_worker):
        out[name] = {**batch[name], TOKENS_PER_WORKER: tokens, SEQUENCES_PER_WORKER: sequences}
    return out


def forward_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a causal LM on one batch part (`input_ids`, `attention_mask`) and return its logits."""
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def next_token_log_softmax(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full next-token log-distribution after the shift, for losses that need every vocabulary entry (KL, UnDIAL, IHL).

    Returns `(log_probs [batch, seq - 1, vocab]` in float32, `mask [batch, seq - 1])`; callers reduce with `mask`.
    """
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    return F.log_softmax(shifted_logits.float(), dim=-1), token_mask(shifted_labels)


# --- cross-entropy to a soft target, at the labelled positions only ---------------------------------------------
def labelled_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shifted logits at the labelled positions, `[n, vocab]` in row-major (batch, position) order, and their
    labels `[n]`: the rows a token loss reads, without the prompt's and padding's."""
    shifted_logits, shifted_labels = shift_for_next_token(logits, labels)
    labelled = shifted_labels != IGNORE_INDEX
    return shifted_logits[labelled], shifted_labels[labelled]


def soft_cross_entropy(
    logits: torch.Tensor,
    target_logits: torch.Tensor,
    target_index: torch.Tensor | None = None,
    adjust_index: torch.Tensor | None = None,
    adjust: float = 0.0,
) -> torch.Tensor:
    """Per row, the cross-entropy -sum_v t_v log softmax(logits)_v to a soft target t, `[n]`.

    `logits`: `[n, vocab]` (`labelled_rows`). Dense: `target_logits` `[n, vocab]` and t = softmax(target_logits);
    `adjust_index` `[n]` and `adjust` add `adjust` to the target logit at that id first (UnDIAL's -gamma at the true
    token). Sparse: `target_logits` `[n, k]` are log t at the distinct vocabulary ids `target_index` `[n, k]`
    (summing to at most 1), and the mass they leave, 1 - sum exp(target_logits), is spread evenly over the other
    vocab - k ids. Any float dtype (float16 caches): the target is taken in float32.
    Computed `LABEL_CHUNK` rows at a time in float32, and the backward (softmax(logits) - t) recomputes each chunk:
    no float32 `[n, vocab]` tensor is kept, only the inputs."""
    if adjust_index is not None and target_index is not None:
        raise ValueError("soft_cross_entropy: adjust applies to a dense target only")
    return _SoftCrossEntropy.apply(logits, target_logits, target_index, adjust_index, adjust)


def _dense_target(target_logits: torch.Tensor, adjust_index: torch.Tensor | None, adjust: float,
                  rows: slice, dtype: torch.dtype) -> torch.Tensor:
    """softmax of one chunk's target logits in `dtype` (the logits' reduction dtype, so that the target sums to 1
    in it), the adjustment applied."""
    target = target_logits[rows].to(dtype)
    if adjust_index is not None:
        target = target.scatter_add(-1, adjust_index[rows].unsqueeze(-1),
                                    torch.full_like(target[:, :1], adjust))
    return torch.softmax(target, dim=-1)


def _sparse_target(target_logits: torch.Tensor, vocab: int, rows: slice,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's kept probabilities `[c, k]` and the probability of each other id `[c, 1]`, in `dtype`."""
    kept = target_logits[rows].to(dtype).exp()
    others = vocab - kept.shape[-1]
    tail = (1.0 - kept.sum(dim=-1, keepdim=True)).clamp(min=0.0) / max(others, 1)
    return kept, tail


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target_logits, target_index, adjust_index, adjust):
        out = []
        vocab = logits.shape[-1]
        for start in range(0, logits.shape[0], LABEL_CHUNK):
            rows = slice(start, start + LABEL_CHUNK)
            z = at_least_float32(logits[rows])
            # -sum_v t_v (z_v - lse(z)) = lse(z) - sum_v t_v z_v, as sum_v t_v = 1
            if target_index is None:
                expected = (_dense_target(target_logits, adjust_index, adjust, rows, z.dtype) * z).sum(dim=-1)
            else:
                kept, tail = _sparse_target(target_logits, vocab, rows, z.dtype)
                picked = z.gather(-1, target_index[rows])
                expected = (kept * picked).sum(dim=-1) + tail.squeeze(-1) * (z.sum(dim=-1) - picked.sum(dim=-1))
            out.append(torch.logsumexp(z, dim=-1) - expected)
        ctx.save_for_backward(logits, target_logits, target_index, adjust_index)
        ctx.adjust = adjust
        return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, target_logits, target_index, adjust_index = ctx.saved_tensors
        chunks = []
        vocab = logits.shape[-1]
        for start in range(0, logits.shape[0], LABEL_CHUNK):
            rows = slice(start, start + LABEL_CHUNK)
            local = torch.softmax(at_least_float32(logits[rows]), dim=-1)  # d/dz = softmax(z) - t
            if target_index is None:
                local -= _dense_target(target_logits, adjust_index, ctx.adjust, rows, local.dtype)
            else:
                kept, tail = _sparse_target(target_logits, vocab, rows, local.dtype)
                local -= tail
                local.scatter_add_(-1, target_index[rows], tail - kept)
            chunks.append((local * grad[rows].unsqueeze(-1)).to(logits.dtype))
        grad_logits = torch.cat(chunks) if chunks else torch.zeros_like(logits)
        return grad_logits, None, None, None, None


@torch.no_grad()
def soft_entropy(target_logits: torch.Tensor) -> torch.Tensor:
    """Per row, the entropy of softmax(target_logits) `[n, vocab]`, in float32 chunks (KL = cross-entropy - this)."""
    out = []
    for chunk in target_logits.split(LABEL_CHUNK):
        log_t = torch.log_softmax(at_least_float32(chunk), dim=-1)
        out.append(-(log_t.exp() * log_t).sum(dim=-1))
    return torch.cat(out) if out else target_logits.new_zeros(0, dtype=torch.float32)
