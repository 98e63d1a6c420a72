"""ICU (methods/icu.py, methods/icu_metrics.py): the loss by hand, refinement, the stop rule, the metrics."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

import methods
from methods.base import ForgetSample
from methods.numerics import forward_logits, token_mean_nll
from methods.icu_metrics import (
    extraction_likelihood,
    greedy_continuations,
    memorisation_accuracy,
    rouge_l_f1,
    sentence_bleu,
    token_f1,
)

VOCAB = 64
FILLER = 1  # what the bigram model predicts after a token it has no rule for


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits at every position are one fixed row, whatever the input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.nn.Parameter(torch.tensor(row))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.row.expand(*input_ids.shape, -1))


class Bigram(torch.nn.Module):
    """Greedy output under our control: the next token is `rules[current token]` (FILLER when there is no rule).
    Returns no KV cache, so greedy decoding re-reads the whole prefix (the fallback path)."""

    def __init__(self, rules: dict[int, int]) -> None:
        super().__init__()
        table = torch.full((VOCAB,), FILLER, dtype=torch.long)
        for current, following in rules.items():
            table[current] = following
        self.register_buffer("table", table)
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=self.scale * torch.nn.functional.one_hot(self.table[input_ids], VOCAB).float())


def chain(*tokens: int) -> dict[int, int]:
    return dict(zip(tokens[:-1], tokens[1:]))


def sample(index: int, prompt: list[int], answer: list[int]) -> ForgetSample:
    return ForgetSample(index, torch.tensor(prompt), torch.tensor(answer))


def part(label: int, index: int) -> dict[str, torch.Tensor]:
    """One row [0, label]: only position 1 is labelled, predicted by the logits at position 0."""
    return {
        "input_ids": torch.tensor([[0, label]]),
        "attention_mask": torch.ones(1, 2, dtype=torch.long),
        "labels": torch.tensor([[-100, label]]),
        "index": torch.tensor([index]),
    }


class TestLoss:
    def test_hand_computed(self):
        """Current model q = softmax([ln 3, 0]) = [3/4, 1/4]; original p = softmax([0, 0]) = [1/2, 1/2].
        forget label 1:    NLL_f = -ln(1/4) = ln 4
        analogous label 0: NLL_a = -ln(3/4) = ln 4 - ln 3
        CE(p, q) = -(1/2 ln 3/4 + 1/2 ln 1/4) = ln 4 - (1/2) ln 3
        L = -ln 4 + 0.5 (ln 4 - ln 3) + 1 (ln 4 - (1/2) ln 3) = ln 2 - ln 3 = ln(2/3)."""
        icu = methods.build("icu", reference=FixedLogits([0.0, 0.0]))
        batch = {"forget": part(1, 0), "analogous": part(0, 7)}
        loss, logs = icu.loss(FixedLogits([math.log(3.0), 0.0]), batch)
        assert loss.item() == pytest.approx(math.log(2 / 3), abs=1e-3)  # reference cached in float16
        assert logs["forget_nll"] == pytest.approx(math.log(4), abs=1e-6)
        assert logs["analogous_nll"] == pytest.approx(math.log(4 / 3), abs=1e-6)
        assert logs["analogous_ce_original"] == pytest.approx(math.log(4) - 0.5 * math.log(3), abs=1e-3)
        icu.loss(FixedLogits([math.log(3.0), 0.0]), batch)
        assert icu.reference_cache.misses == 1 and icu.reference_cache.hits == 1  # original run once per example

    def test_one_step_ascends_on_forget_and_descends_on_analogous(self, tiny_model, batch):
        icu = methods.build("icu", reference=copy.deepcopy(tiny_model))
        assert icu.uses_analogous and icu.needs_reference and not icu.uses_retain
        with torch.no_grad():
            nll = {name: float(token_mean_nll(forward_logits(tiny_model, batch[name]), batch[name]["labels"]))
                   for name in ("forget", "analogous")}
        optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
        icu.loss(tiny_model, batch)[0].backward()
        optimizer.step()
        with torch.no_grad():
            _, logs = icu.loss(tiny_model, batch)
        assert logs["forget_nll"] > nll["forget"] and logs["analogous_nll"] < nll["analogous"]


class TestRefinement:
    MODEL_RULES = {**chain(4, 5, 6, 7, 8, 9, 10), **chain(12, 20, 21, 22, 23, 24, 25)}
    REMEMBERED = sample(0, [3, 4], [5, 6, 7, 8, 9, 10])
    FORGOTTEN = sample(1, [11, 12], [13, 14, 15, 16, 17, 18])

    def test_drops_a_sample_whose_continuation_no_longer_matches(self):
        model = Bigram(self.MODEL_RULES)
        icu = methods.build("icu", reference=model)
        assert icu.on_epoch_end(model, [self.REMEMBERED, self.FORGOTTEN], holdout=[]) == {0}
        assert icu.last_refinement["kept"] == 1

    def test_no_sample_left_is_an_empty_set(self):
        model = Bigram({})
        icu = methods.build("icu", reference=model)
        assert icu.on_epoch_end(model, [self.REMEMBERED, self.FORGOTTEN], holdout=[]) == set()

    def test_thresholds_are_hyperparameters(self):
        model = Bigram(self.MODEL_RULES)
        icu = methods.build("icu", reference=model, similarity_threshold=0.0, bleu_threshold=0.0)
        assert icu.on_epoch_end(model, [self.REMEMBERED, self.FORGOTTEN], holdout=[]) == {0, 1}


class TestStopRule:
    # The model half-remembers the forget answer: it still passes BLEU/F1 (kept) but MA = 3/6 and EL = 0.
    PARTIAL = sample(0, [3, 4], [5, 6, 7, 8, 9, 10])
    PARTIAL_RULES = chain(4, 5, 6, 7, 30, 31, 32)
    HOLDOUT = [sample(100, [40, 41], [42, 43, 44, 45, 46, 47])]

    def test_stops_when_forget_memorisation_falls_to_the_never_seen_level(self):
        # The original model reproduces the holdout (MA 1, EL 1): forget MA 0.5 <= 1 and EL 0 <= 1 -> stop.
        icu = methods.build("icu", reference=Bigram(chain(41, 42, 43, 44, 45, 46, 47)))
        assert icu.on_epoch_end(Bigram(self.PARTIAL_RULES), [self.PARTIAL], self.HOLDOUT) == set()
        assert icu.last_refinement["memorisation_accuracy"] == pytest.approx(0.5)
        assert icu.last_refinement["memorisation_threshold"] == pytest.approx(1.0)

    def test_keeps_going_while_forget_is_remembered_better_than_unseen_data(self):
        icu = methods.build("icu", reference=Bigram({}))  # the original model knows nothing of the holdout
        assert icu.on_epoch_end(Bigram(self.PARTIAL_RULES), [self.PARTIAL], self.HOLDOUT) == {0}

    def test_fixed_thresholds_and_switch(self):
        model = Bigram(self.PARTIAL_RULES)
        fixed = methods.build("icu", reference=model, memorisation_threshold=0.6, extraction_threshold=0.05)
        assert fixed.on_epoch_end(model, [self.PARTIAL], holdout=[]) == set()
        off = methods.build("icu", reference=Bigram(chain(41, 42, 43, 44, 45, 46, 47)), stop_on_holdout=False)
        assert off.on_epoch_end(model, [self.PARTIAL], self.HOLDOUT) == {0}


class TestMetrics:
    def test_bleu(self):
        assert sentence_bleu([5, 6, 7, 8], [5, 6, 7, 8]) == pytest.approx(1.0)
        # p1 = 3/6, p2 = 2/5, p3 = 1/4, p4 = 0 -> smoothed 0.1/3; equal lengths, no brevity penalty
        expected = (0.5 * 0.4 * 0.25 * (0.1 / 3)) ** 0.25
        assert sentence_bleu([5, 6, 7, 30, 31, 32], [5, 6, 7, 8, 9, 10]) == pytest.approx(expected)
        assert sentence_bleu([5, 6], [5, 6, 7, 8]) == pytest.approx(math.exp(1 - 4 / 2) * (1 * 1 * 0.1 * 0.1) ** 0.25)
        assert sentence_bleu([], [1]) == 0.0

    def test_bertscore_substitutes(self):
        assert token_f1([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(1.0)  # order-free, like BERTScore matching
        assert token_f1([1, 1, 2], [1, 3]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
        assert rouge_l_f1([1, 2, 3, 4], [1, 3, 4, 5]) == pytest.approx(0.75)  # LCS 1 3 4
        assert rouge_l_f1([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(0.25)

    def test_memorisation_and_extraction(self):
        model = Bigram(chain(4, 5, 6, 7, 30))
        s = sample(0, [3, 4], [5, 6, 7, 8])
        assert memorisation_accuracy(model, [s]) == pytest.approx(3 / 4)
        # n = 2, cuts t = 0, 1, 2: [5 6 7 30] vs 5 6 7 8 -> 2/3; [6 7 30] vs 6 7 8 -> 1/2; [7 30] vs 7 8 -> 0
        assert extraction_likelihood(model, [s], n=2) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
        assert extraction_likelihood(model, [s], n=10) == 0.0  # n capped at 4: one cut, not reproduced

    def test_greedy_continuations_match_generate_with_left_padding(self, tiny_model):
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (3, 7, 5)]
        lengths = [6, 4, 8]
        batched = greedy_continuations(tiny_model, prompts, lengths, batch_size=3)
        for prompt, length, continuation in zip(prompts, lengths, batched):
            expected = tiny_model.generate(
                prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), do_sample=False,
                max_new_tokens=length, eos_token_id=None,
            )[0, len(prompt):]
            assert continuation.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "hparams, needle",
    [
        ({"alpha": -1}, "alpha"),
        ({"similarity_threshold": 1.5}, "similarity_threshold"),
        ({"similarity": "bertscore"}, "similarity"),
        ({"extraction_ngram": 0}, "extraction_ngram"),
        ({"generation_batch_size": 0}, "generation_batch_size"),
    ],
)
def test_invalid_hyperparameters_are_one_line_config_errors(hparams, needle):
    with pytest.raises(methods.MethodConfigError, match=needle) as err:
        methods.build("icu", reference=torch.nn.Linear(1, 1), **hparams)
    assert "\n" not in str(err.value)
