"""Reference values computed once before training (orchestrator/worker/reference_values.py): every lookup of the
training steps hits, the values are the reference forward's, and the reference model is released."""

from __future__ import annotations

import random

import pytest
import torch

import methods
from orchestrator.data.tokenize import EncodedRow
from orchestrator.worker.batching import ROW_ID_BASE, UnlearningBatches, UnlearningRows
from orchestrator.worker.reference_values import precompute_reference, scheduled_rows, settle_reference

VOCAB = 64


def _rows(n: int, base: int, seed: int) -> list[EncodedRow]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 5))]
        answer = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(2, 6))]
        out.append(EncodedRow(prompt + answer, [-100] * len(prompt) + answer, base + i))
    return out


def _model(seed: int = 0) -> torch.nn.Module:
    from orchestrator.models.loading import tiny_llama

    torch.manual_seed(seed)
    return tiny_llama(VOCAB, seed=seed, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _batches(parts: tuple[str, ...], world_size: int = 1, rank: int = 0) -> UnlearningBatches:
    forget = _rows(7, 0, seed=1)
    rows = UnlearningRows(forget=forget, retain=_rows(30, ROW_ID_BASE["retain"], seed=2),
                          alternate=[EncodedRow(r.input_ids[:-1] + [5], r.labels[:-1] + [5], r.index) for r in forget])
    return UnlearningBatches(rows, batch_size=2, pad_token_id=0, rank=rank, world_size=world_size, seed=3,
                             parts=parts)


def test_the_schedule_lists_every_row_a_worker_draws():
    batches = _batches(("forget", "retain"), world_size=2)
    drawn = scheduled_rows(batches, epochs=3)
    assert set().union(*(d["forget"] for d in drawn)) == set(range(7))
    for rank, mine in enumerate(drawn):
        own = UnlearningBatches(batches.rows, 2, 0, rank, 2, 3, ("forget", "retain"))
        seen = {int(i) for e in range(3) for b in own.epoch(e) for i in b["retain"]["index"]}
        assert mine["retain"] == seen  # the retain rows each worker draws at random, known before the first step


@pytest.mark.parametrize("name,hparams,parts", [
    ("npo", {}, ("forget", "retain")),
    ("undial", {}, ("forget",)),
    ("kl", {}, ("forget", "retain")),
    ("idkpo", {}, ("forget", "retain", "alternate")),
    ("soul", {"objective": "npo"}, ("forget", "retain")),
])
def test_every_training_lookup_hits_and_the_reference_goes(name, hparams, parts):
    model = _model()
    method = methods.build(name, reference=model, **hparams)
    batches = _batches(parts)
    stats = precompute_reference(method, batches, epochs=3, to_device=lambda p: p, rank=0)
    assert method.reference is None and stats.released
    assert stats.precomputed_rows == stats.held_rows > 0
    model.requires_grad_(True)
    for epoch in range(3):
        for batch in batches.epoch(epoch):
            method.loss(model, batch)
    summary = stats.with_lookups(method.reference_cache)
    assert summary["misses"] == 0 and summary["hits"] > 0 and summary["hit_rate"] == 1.0


def test_the_cached_values_are_the_reference_forward():
    model, reference = _model(), _model()
    method = methods.build("npo", reference=reference)
    batches = _batches(("forget", "retain"))
    precompute_reference(method, batches, epochs=1, to_device=lambda p: p, rank=0)
    batch = next(batches.epoch(0))
    cached = method.reference_value(method.FORGET_REFERENCE, batch["forget"])
    from methods.numerics import sequence_logprob

    with torch.no_grad():
        direct = sequence_logprob(reference(input_ids=batch["forget"]["input_ids"],
                                            attention_mask=batch["forget"]["attention_mask"]).logits,
                                  batch["forget"]["labels"])
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-5)
    del model


def test_a_row_missing_after_the_release_is_a_clear_error():
    method = methods.build("npo", reference=_model())
    precompute_reference(method, _batches(("forget", "retain")), epochs=1, to_device=lambda p: p, rank=0)
    stranger = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
                "labels": torch.tensor([[-100, 2, 3]]), "index": torch.tensor([999])}
    with pytest.raises(RuntimeError, match="released.*999"):
        method.reference_value(method.FORGET_REFERENCE, stranger)


def test_a_method_that_keeps_its_reference_gets_a_frozen_copy():
    """ICU generates from the original model at epoch end: it keeps a copy, and the trained model stays its own."""
    model = _model()
    method = methods.build("icu", reference=model)
    batches = _batches(("forget",))
    stats = settle_reference(method, model, batches, 1, lambda p: p, 0, None)
    assert not stats.released and method.reference is not None and method.reference is not model
    assert not any(p.requires_grad for p in method.reference.parameters())
    for a, b in zip(method.reference.parameters(), model.parameters()):
        assert torch.equal(a, b)
