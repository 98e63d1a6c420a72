"""Cross-entropy to a soft target at the labelled positions, in chunks (methods/numerics.py `soft_cross_entropy`),
and UnDIAL on it: the same losses and gradients as the float32 full-vocabulary formulation it replaces, and the
sparse (top-k) teacher's error."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import methods
import methods.numerics as numerics
from methods.numerics import IGNORE_INDEX, at_least_float32, labelled_rows, soft_cross_entropy, soft_entropy
from methods.ceu import cross_entropy_unlearning
from methods.ihl import inverted_hinge
from methods.undial import sparse_adjusted_target


def _rows(dtype: torch.dtype, n: int = 13, vocab: int = 97, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, vocab, generator=g)).to(dtype).requires_grad_(True)
    target = (2 * torch.randn(n, vocab, generator=g)).to(torch.float16)
    labels = torch.randint(0, vocab, (n,), generator=g)
    return logits, target, labels


def _dense_reference(logits, target, labels=None, adjust=0.0):
    t = target.float()
    if labels is not None:
        t = t.scatter_add(-1, labels.unsqueeze(-1), torch.full_like(t[:, :1], adjust))
    return -(F.softmax(t, dim=-1) * F.log_softmax(at_least_float32(logits), dim=-1)).sum(dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1024, 4, 5])  # 5 does not divide the 13 rows
def test_dense_values_and_gradients_equal_the_full_formulation(dtype, chunk, monkeypatch):
    monkeypatch.setattr(numerics, "LABEL_CHUNK", chunk)
    logits, target, labels = _rows(dtype)
    weights = torch.arange(1.0, 14.0)
    for adjust_index, adjust in ((None, 0.0), (labels, -3.0)):
        new = soft_cross_entropy(logits, target, adjust_index=adjust_index, adjust=adjust)
        (new_grad,) = torch.autograd.grad((new * weights).sum(), logits)
        old = _dense_reference(logits, target, adjust_index, adjust)
        (old_grad,) = torch.autograd.grad((old * weights).sum(), logits)
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(new_grad.double(), old_grad.double(), rtol=1e-6, atol=1e-6)


def test_a_sparse_target_spreads_what_it_leaves_evenly_over_the_other_ids():
    logits, target, _ = _rows(torch.float64)
    full = F.softmax(target.double(), -1)
    ids = torch.stack([torch.randperm(97, generator=torch.Generator().manual_seed(i))[:6] for i in range(13)])
    kept = full.gather(-1, ids)
    tail = (1 - kept.sum(-1, keepdim=True)) / (97 - 6)
    dense = tail.expand(13, 97).scatter(-1, ids, kept)
    new = soft_cross_entropy(logits, kept.log().float(), target_index=ids)
    old = -(dense * F.log_softmax(logits, -1)).sum(-1)
    (new_grad,) = torch.autograd.grad((new * torch.arange(13.0)).sum(), logits)
    (old_grad,) = torch.autograd.grad((old * torch.arange(13.0)).sum(), logits)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_grad, old_grad, rtol=1e-6, atol=1e-6)


def test_entropy_and_no_rows():
    _, target, _ = _rows(torch.float32)
    log_t = F.log_softmax(target.float(), -1)
    torch.testing.assert_close(soft_entropy(target), -(log_t.exp() * log_t).sum(-1))
    empty = torch.zeros(0, 5, requires_grad=True)
    out = soft_cross_entropy(empty, torch.zeros(0, 5))
    assert out.shape == (0,)
    out.sum().backward()
    assert empty.grad.shape == (0, 5)


def test_labelled_rows_skip_prompt_and_padding():
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4], [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX]])
    rows, targets = labelled_rows(logits, labels)
    assert targets.tolist() == [3, 4, 5]
    assert torch.equal(rows, torch.stack([logits[0, 1], logits[0, 2], logits[1, 0]]))


# --- UnDIAL on a tiny Llama ---------------------------------------------------------------------------------
def _llama(vocab: int = 61):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=64, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    ids[2, 9:], attention[2, 9:], labels[2, 9:] = 0, 0, IGNORE_INDEX
    return model, {"forget": {"input_ids": ids, "attention_mask": attention, "labels": labels,
                              "index": torch.arange(3)}}


def _old_undial_loss(model, teacher_log_p, part, gamma):
    """The formulation it replaces: float32 [batch, seq - 1, vocab] log_softmax, target and product."""
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
    log_p = F.log_softmax(at_least_float32(logits[:, :-1]), -1)
    labels = part["labels"][:, 1:]
    mask = (labels != IGNORE_INDEX).float()
    true = labels.clamp(min=0).unsqueeze(-1)
    target = F.softmax(teacher_log_p.scatter_add(-1, true, torch.full_like(true, -gamma, dtype=torch.float32)), -1)
    return (-(target * log_p).sum(-1) * mask).sum() / mask.sum()


def _loss_and_grads(method, model, batch):
    model.zero_grad()
    loss, logs = method.loss(model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], logs


def test_undial_equals_the_full_vocabulary_formulation():
    model, batch = _llama()
    method = methods.build("undial", reference=copy.deepcopy(model), gamma=3.0)
    with torch.no_grad():
        method.reference_value(method.TEACHER, batch["forget"])  # cached (float16) as before training
        teacher = method.reference_value(method.TEACHER, batch["forget"])
    method.release_reference()
    loss, grads, _ = _loss_and_grads(method, model, batch)
    model.zero_grad()
    old = _old_undial_loss(model, teacher, batch["forget"], 3.0)
    old.backward()
    assert loss.item() == pytest.approx(old.item(), abs=1e-6)
    for new, before in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(new, before, rtol=1e-6, atol=1e-6)


def test_undial_top_k_is_exact_with_the_whole_vocabulary_and_reports_what_a_small_k_drops():
    model, batch = _llama()
    full = methods.build("undial", reference=copy.deepcopy(model), gamma=3.0)
    loss_full, grads_full, _ = _loss_and_grads(full, model, batch)  # reference values in float32 (no cache yet)
    every = methods.build("undial", reference=copy.deepcopy(model), gamma=3.0, teacher_top_k=60)  # 60 + the true token = all 61
    loss_every, grads_every, logs = _loss_and_grads(every, model, batch)
    assert loss_every.item() == pytest.approx(loss_full.item(), abs=1e-5)
    for a, b in zip(grads_every, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert logs["teacher_tail_mass"] == pytest.approx(0.0, abs=1e-5)
    small = methods.build("undial", reference=copy.deepcopy(model), gamma=3.0, teacher_top_k=4)
    loss_small, _, logs = _loss_and_grads(small, model, batch)
    assert 0.0 < logs["teacher_tail_mass"] < 1.0
    assert loss_small.item() != pytest.approx(loss_full.item(), abs=1e-4)


def test_the_sparse_target_keeps_the_true_token_and_the_likeliest_others():
    logits = torch.tensor([[[0.0, 5.0, 4.0, 1.0, 3.0], [0.0] * 5]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    values = sparse_adjusted_target(logits, labels, gamma=2.0, k=2)[0, 0]
    assert values[3:].tolist() == [2.0, 4.0, 1.0]  # tokens 2 and 4 lead once token 1 is lowered by 2; then y = 1
    adjusted = F.log_softmax(F.log_softmax(logits[0, 0], -1) - 2.0 * F.one_hot(torch.tensor(1), 5), -1)
    torch.testing.assert_close(values[:3], adjusted[[2, 4, 1]])


# --- IHL and CE-U on the labelled rows, in chunks -------------------------------------------------------------
def _full_vocabulary_ihl(logits, labels):
    """The formulation it replaces: float32 softmax over [batch, seq - 1, vocab]."""
    probs = F.softmax(at_least_float32(logits[:, :-1]), -1)
    y = labels[:, 1:]
    mask = y != IGNORE_INDEX
    true = y.clamp(min=0).unsqueeze(-1)
    best_other = probs.scatter(-1, true, 0.0).max(-1).values
    return (1.0 + probs.gather(-1, true).squeeze(-1) - best_other)[mask]


def _full_vocabulary_ceu(logits, labels):
    log_p = F.log_softmax(at_least_float32(logits[:, :-1]), -1)
    y = labels[:, 1:]
    mask = y != IGNORE_INDEX
    true = y.clamp(min=0).unsqueeze(-1)
    target = F.softmax(at_least_float32(logits[:, :-1].detach()).scatter(-1, true, float("-inf")), -1)
    return -(target * log_p).sum(-1)[mask]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1024, 5])
@pytest.mark.parametrize("new_loss, old_loss", [(inverted_hinge, _full_vocabulary_ihl),
                                                (cross_entropy_unlearning, _full_vocabulary_ceu)])
def test_ihl_and_ceu_equal_their_full_vocabulary_formulations(dtype, chunk, new_loss, old_loss, monkeypatch):
    monkeypatch.setattr(numerics, "LABEL_CHUNK", chunk)
    g = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(3, 8, 41, generator=g)).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 41, (3, 8), generator=g)
    labels[:, :3] = IGNORE_INDEX
    labels[1, 5:] = IGNORE_INDEX
    weights = torch.arange(1.0, 13.0)  # 12 labelled positions after the shift
    new = new_loss(logits, labels)
    old = old_loss(logits, labels)
    (new_grad,) = torch.autograd.grad((new * weights).sum(), logits)
    (old_grad,) = torch.autograd.grad((old * weights).sum(), logits)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_grad.double(), old_grad.double(), rtol=1e-6, atol=1e-6)
