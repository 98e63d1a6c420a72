"""Evaluation metrics pinned on cases worked out by hand, then one end-to-end `evaluate_model` on a tiny Llama.

Most likelihood tests use `UnigramLM`, a fake causal LM whose next-token distribution ignores the context:
p(a) = 1/2, p(b) = 1/4, p(c) = 1/8, p(</s>) = 1/16, and the remaining 1/16 spread evenly over the other tokens.
Every log-probability below is then a multiple of ln 2 that can be added up on paper, and its argmax is always "a".
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import EvalReport, EvalSettings, evaluate_model, fluency, memorisation, mia, tofu
from orchestrator.evaluation.evaluate import subsample
from orchestrator.evaluation.generation import generate_answers, reference_text
from orchestrator.evaluation.likelihood import score_alternatives, score_answers
from orchestrator.evaluation.rouge import mean_rouge_l_recall, rouge_l, rouge_l_recall
from orchestrator.models.loading import tiny_llama
from tests.word_tokenizer import word_tokenizer

LN2 = math.log(2.0)
TEMPLATE = PromptTemplate()
WORDS = (
    "a b c Question: Answer: who is where does live what did write when was born the of in and "
    "Ada Bo Cy Di Ed Fay Gus Hal Ivy Jo river town book poem song year city north south old new red blue"
).split()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tensors here are tiny: intra-op threads only add synchronisation, and on a busy 2-core machine spinning
    OpenMP workers made the end-to-end test 80x slower (30 s against 0.4 s). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on the test words: <pad>=0, <s>=1, </s>=2, <unk>=3."""
    return word_tokenizer(WORDS)


class UnigramLM(torch.nn.Module):
    """Fake causal LM: the same next-token distribution at every position (see the module docstring)."""

    def __init__(self, tokenizer):
        super().__init__()
        vocab = tokenizer.get_vocab()
        v = len(vocab)
        probs = torch.full((v,), (1 / 16) / (v - 4), dtype=torch.float64)
        for word, p in (("a", 1 / 2), ("b", 1 / 4), ("c", 1 / 8), ("</s>", 1 / 16)):
            probs[vocab[word]] = p
        self.probs = probs
        self.log_probs = torch.nn.Parameter(probs.log().float(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1).clone())


def qa(id_: str, answer: str, question: str = "who is Ada", **kw) -> Example:
    return Example(id=id_, question=question, answer=answer, subject=id_.split("/")[0], **kw)


# ---------------------------------------------------------------------------------------------------- likelihood


class TestLikelihood:
    def test_sum_and_mean_logprob_by_hand(self, tokenizer):
        # "a a" + </s>: log(1/2) + log(1/2) + log(1/16) = -6 ln2 over 3 tokens; "b c" + </s>: -(2 + 3 + 4) ln2.
        scores = score_answers(UnigramLM(tokenizer), tokenizer, [qa("p/0", "a a"), qa("p/1", "b c")], TEMPLATE)
        np.testing.assert_allclose(scores.sum_logprob, [-6 * LN2, -9 * LN2], rtol=1e-5)
        np.testing.assert_array_equal(scores.num_tokens, [3, 3])
        np.testing.assert_allclose(scores.mean_logprob, [-2 * LN2, -3 * LN2], rtol=1e-5)

    def test_details_exclude_eos_and_match_by_hand(self, tokenizer):
        model = UnigramLM(tokenizer)
        scores = score_answers(model, tokenizer, [qa("p/0", "b a c")], TEMPLATE, details=True)
        np.testing.assert_allclose(scores.token_logprobs[0], [-2 * LN2, -LN2, -3 * LN2], rtol=1e-5)
        np.testing.assert_array_equal(scores.token_correct[0], [False, True, False])
        p = model.probs
        mu = float((p * p.log()).sum())
        std = math.sqrt(float((p * p.log() ** 2).sum()) - mu**2)
        np.testing.assert_allclose(scores.vocab_mean[0], [mu] * 3, rtol=1e-5)
        np.testing.assert_allclose(scores.vocab_std[0], [std] * 3, rtol=1e-4)

    def test_answer_override_and_alternatives(self, tokenizer):
        model = UnigramLM(tokenizer)
        ex = qa("p/0", "a a", perturbed_answers=("b b", "c c"))
        override = score_answers(model, tokenizer, [ex], TEMPLATE, answers=["c c"])
        np.testing.assert_allclose(override.mean_logprob, [-10 / 3 * LN2], rtol=1e-5)
        alts = score_alternatives(model, tokenizer, [ex, qa("p/1", "a")], TEMPLATE, [["b b", "c c"], []])
        np.testing.assert_allclose(alts[0], [-8 / 3 * LN2, -10 / 3 * LN2], rtol=1e-5)
        assert alts[1].size == 0

    def test_batch_size_does_not_change_scores(self, tokenizer):
        model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        model.eval()
        examples = [qa("p/0", "Ada was born in the old town"), qa("p/1", "Bo"), qa("p/2", "red book", question="what")]
        one = score_answers(model, tokenizer, examples, TEMPLATE, batch_size=1, details=True)
        all_ = score_answers(model, tokenizer, examples, TEMPLATE, batch_size=3, details=True)
        np.testing.assert_allclose(one.sum_logprob, all_.sum_logprob, rtol=1e-4, atol=1e-4)
        for a, b in zip(one.token_logprobs, all_.token_logprobs):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        # The details path (log_softmax on answer positions only) agrees with numerics.token_logprobs.
        np.testing.assert_allclose(
            [lp.sum() for lp in all_.token_logprobs],
            all_.sum_logprob - _eos_logprobs(model, tokenizer, examples),
            rtol=1e-4,
            atol=1e-4,
        )


def _eos_logprobs(model, tokenizer, examples) -> np.ndarray:
    """log p(</s>) at the end of each answer, by running each row alone."""
    out = []
    for ex in examples:
        ids = [1] + tokenizer.encode(TEMPLATE.prompt(ex) + ex.answer, add_special_tokens=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits
        out.append(float(torch.log_softmax(logits[0, -1].float(), -1)[2]))
    return np.array(out)


# ---------------------------------------------------------------------------------------------------------- TOFU


class TestTofu:
    def test_truth_ratio_by_hand_on_fake_model(self, tokenizer):
        # Paraphrase "a a": mean log p = -2 ln2. Perturbed "b b" and "c c": -8/3 ln2 and -10/3 ln2, geometric mean
        # 2^-3. R = 2^-3 / 2^-2 = 1/2.
        model = UnigramLM(tokenizer)
        ex = qa("p/0", "b", paraphrased_answer="a a", perturbed_answers=("b b", "c c"))
        para = score_answers(model, tokenizer, [ex], TEMPLATE, answers=["a a"]).mean_logprob
        pert = score_alternatives(model, tokenizer, [ex], TEMPLATE, [list(ex.perturbed_answers)])
        ratios = tofu.truth_ratios(para, pert)
        np.testing.assert_allclose(ratios, [0.5], rtol=1e-5)
        assert tofu.truth_ratio_true_better(ratios) == pytest.approx(0.5, rel=1e-5)
        assert tofu.truth_ratio_closer_to_one(ratios) == pytest.approx(0.5, rel=1e-5)

    def test_truth_ratio_aggregates_and_missing_options(self):
        ratios = tofu.truth_ratios(np.log([0.5, 0.5, 0.5]), [np.log([0.25, 1.0]), np.log([1.0]), np.array([])])
        np.testing.assert_allclose(ratios[:2], [1.0, 2.0])
        assert np.isnan(ratios[2])
        assert tofu.truth_ratio_true_better(ratios) == pytest.approx(0.0, abs=1e-8)  # max(0, 1-1), max(0, 1-2)
        assert tofu.truth_ratio_closer_to_one(ratios) == pytest.approx((1.0 + 0.5) / 2)

    def test_probability_and_normalised_probability(self):
        np.testing.assert_allclose(tofu.probability(np.log([0.5, 0.25])), [0.5, 0.25])
        # 0.5 / (0.5 + 0.25 + 0.25) = 0.5; no options -> nan
        norm = tofu.normalised_probability(np.log([0.5, 0.5]), [np.log([0.25, 0.25]), np.array([])])
        assert norm[0] == pytest.approx(0.5)
        assert np.isnan(norm[1])

    def test_forget_quality_ks(self):
        rng = np.random.default_rng(0)
        same = rng.uniform(0, 1, 50)
        assert tofu.forget_quality(same, same.copy()) == pytest.approx(1.0)
        low, high = rng.uniform(0.0, 0.3, 50), rng.uniform(0.7, 1.0, 50)
        assert tofu.forget_quality(low, high) < 1e-10
        # KS is invariant under monotone maps: 1/R (open-unlearning's utils.get_forget_quality) gives the same p.
        assert tofu.forget_quality(1 / low, 1 / high) == pytest.approx(tofu.forget_quality(low, high))

    def test_model_utility_is_harmonic_mean(self):
        assert tofu.model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
        assert tofu.model_utility([0.5, 0.0]) == 0.0
        assert tofu.model_utility([0.5, float("nan")]) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------- ROUGE


class TestRouge:
    def test_rouge_l_recall_known_strings(self):
        # LCS("the cat sat on the mat", "the cat on mat") = 4 tokens: recall 4/6, precision 1, F1 = 0.8.
        [score] = rouge_l(["the cat on mat"], ["the cat sat on the mat"])
        assert score.recall == pytest.approx(4 / 6)
        assert score.f1 == pytest.approx(0.8)

    def test_stemming_and_edge_cases(self):
        # Porter stemming (use_stemmer=True, as TOFU): "runs" and "running" both become "run".
        np.testing.assert_allclose(rouge_l_recall(["He was running", "", "x"], ["he runs", "Paris", "x"]), [1, 0, 1])
        assert mean_rouge_l_recall(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------------------ MIA


class TestMia:
    def test_auc_known_scores(self):
        assert mia.mann_whitney_auc([3, 4], [1, 2]) == 1.0
        assert mia.mann_whitney_auc([1, 2], [3, 4]) == 0.0
        # Pairs (pos, neg): (1,0) win, (1,2) loss, (3,0) win, (3,2) win -> 3/4.
        assert mia.mann_whitney_auc([1, 3], [0, 2]) == pytest.approx(0.75)

    def test_auc_ties_count_half(self):
        assert mia.mann_whitney_auc([1, 1], [1, 1]) == 0.5
        # (2,2) tie 0.5, (2,1) win, (3,2) win, (3,1) win -> 3.5 / 4.
        assert mia.mann_whitney_auc([2, 3], [2, 1]) == pytest.approx(0.875)

    def test_auc_matches_pairwise_definition(self):
        rng = np.random.default_rng(1)
        pos, neg = rng.integers(0, 5, 17).astype(float), rng.integers(0, 5, 11).astype(float)
        pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
        assert mia.mann_whitney_auc(pos, neg) == pytest.approx(np.mean(pairs))

    def test_membership_orientation_and_privacy_leakage(self):
        # Loss-like scores: forget (members) lower than holdout -> AUC 1.
        assert mia.membership_auc(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == 1.0
        assert mia.privacy_leakage(0.7, 0.7) == pytest.approx(0.0)
        # MUSE orientation: an unlearned model that still recognises its forget set (AUC 1 vs 0.5) -> about -1.
        assert mia.privacy_leakage(1.0, 0.5) == pytest.approx(-1.0)
        assert mia.privacy_leakage(0.25, 0.5) == pytest.approx(0.5)

    def test_min_k_and_zlib_known_inputs(self):
        lp = np.array([-1.0, -5.0, -2.0, -4.0, -3.0])
        assert mia.min_k_score(lp, k=0.4) == pytest.approx(4.5)  # lowest 2: -5, -4
        assert mia.min_k_score(lp, k=0.1) == pytest.approx(5.0)  # at least one token
        assert mia.min_k_score(np.array([]), k=0.4) == 0.0
        assert mia.zlib_score(-2.0, "hello") == pytest.approx(2.0 / len(zlib.compress(b"hello")))
        assert mia.loss_score(-2.0) == 2.0

    def test_min_k_plus_plus_known_inputs(self):
        # z = ((-1 + 2) / 1, (-3 + 2) / 2) = (1, -0.5); lowest half is -0.5.
        assert mia.min_k_plus_plus_score([-1.0, -3.0], [-2.0, -2.0], [1.0, 2.0], k=0.5) == pytest.approx(0.5)

    def test_attack_scores_from_fake_model(self, tokenizer):
        scores = score_answers(UnigramLM(tokenizer), tokenizer, [qa("p/0", "b a c")], TEMPLATE, details=True)
        out = mia.attack_scores(scores, ["b a c"], k=0.4)
        assert out["loss"][0] == pytest.approx((2 + 1 + 3 + 4) / 4 * LN2, rel=1e-5)
        assert out["min_k"][0] == pytest.approx(3 * LN2, rel=1e-5)  # int(3 * 0.4) = 1 token: c


# ----------------------------------------------------------------------------------------------- memorisation


class TestMemorisation:
    @pytest.mark.parametrize(
        "answer, es, em",
        [
            ("a a a", 1.0, 1.0),
            ("b a a", 2 / 3, 2 / 3),
            ("a b a", 1 / 3, 2 / 3),
            ("a a b", 0.0, 2 / 3),
            ("b c", 0.0, 0.0),
        ],
    )
    def test_extraction_strength_and_exact_memorisation(self, tokenizer, answer, es, em):
        # UnigramLM's argmax is always "a": the teacher-forced hits are exactly the positions holding "a".
        scores = score_answers(UnigramLM(tokenizer), tokenizer, [qa("p/0", answer)], TEMPLATE, details=True)
        assert memorisation.extraction_strength(scores.token_correct[0]) == pytest.approx(es)
        assert memorisation.exact_memorisation(scores.token_correct[0]) == pytest.approx(em)

    def test_empty_answers(self):
        assert memorisation.extraction_strength(np.zeros(0, dtype=bool)) == 0.0
        assert memorisation.exact_memorisation(np.zeros(0, dtype=bool)) is None
        assert memorisation.mean_exact_memorisation([np.zeros(0, dtype=bool), np.array([True, False])]) == 0.5

    def test_verbatim_and_knowledge_split_by_kind(self):
        rouge = rouge_l(["a b", "x", "c d"], ["a b", "y", "c e"])
        kinds = ["text", "qa", "qa"]
        assert memorisation.verbatim_memorisation(rouge, kinds) == pytest.approx(1.0)
        assert memorisation.knowledge_memorisation(rouge, kinds) == pytest.approx((0.0 + 0.5) / 2)
        assert memorisation.verbatim_memorisation(rouge, ["qa"] * 3) is None


# -------------------------------------------------------------------------------------------------------- fluency


class TestFluency:
    def test_repetitive_text_has_zero_entropy(self):
        assert fluency.n_gram_entropy("the the the the the") == 0.0
        assert fluency.n_gram_entropy("") == 0.0

    def test_varied_text_by_hand(self):
        # 5 distinct words: 4 distinct bigrams (2 bits), 3 distinct trigrams (log2 3 bits); ROME weights 2/3, 4/3.
        expected = (2 / 3 * 2.0 + 4 / 3 * math.log2(3)) / 2
        assert fluency.n_gram_entropy("one two three four five") == pytest.approx(expected)
        assert fluency.n_gram_entropy("one two three four five") > fluency.n_gram_entropy("one two one two one")

    def test_degenerate_fraction(self):
        texts = ["", "x x x", "hello world", "x"]
        assert fluency.degenerate_fraction(texts) == pytest.approx(0.5)
        assert fluency.degenerate_fraction(texts, [[], [7, 7, 7], [5, 6], [7]]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------------- generation


def test_generation_left_padding_matches_single_rows(tokenizer):
    model = tiny_llama(len(tokenizer), seed=1, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.eval()
    examples = [qa("p/0", "Ada", question="who is the old poem of Ada in the north"), qa("p/1", "Bo", question="who")]
    text = Example(id="t/0", question="", answer="the river of the old town and the new city", subject="t", kind="text")
    together = generate_answers(model, tokenizer, examples + [text], TEMPLATE, max_new_tokens=6, batch_size=3)
    alone = [generate_answers(model, tokenizer, [ex], TEMPLATE, max_new_tokens=6) for ex in examples + [text]]
    assert together.token_ids == [g.token_ids[0] for g in alone]
    assert all(len(ids) <= 6 and 2 not in ids for ids in together.token_ids)
    assert together.texts[0] == tokenizer.decode(together.token_ids[0], skip_special_tokens=True).strip()
    assert together.references[:2] == ["Ada", "Bo"]
    # A passage is prompted with its first half of tokens and scored against the rest.
    assert reference_text(tokenizer, text) == "town and the new city"


# ---------------------------------------------------------------------------------------------------- end to end


def _people(prefix: str, n: int) -> tuple[Example, ...]:
    names = "Ada Bo Cy Di Ed Fay Gus Hal Ivy Jo".split()
    places = "river town book poem song city".split()
    out = []
    for i in range(n):
        name, place = names[i % len(names)], places[i % len(places)]
        out.append(
            Example(
                id=f"{prefix}-{i}/q0",
                question=f"where does {name} live",
                answer=f"{name} was born in the old {place}",
                subject=f"{prefix}-{i}",
                paraphrased_answer=f"the old {place} is where {name} was born",
                perturbed_answers=(f"{name} was born in the new {place}", f"{name} was born in the red city"),
            )
        )
    return tuple(out)


@pytest.fixture(scope="module")
def unlearning_data() -> UnlearningData:
    text = Example(
        id="doc-0", question="", answer="the river of the old town and the new city", subject="d", kind="text"
    )
    world = Example(
        id="w-0", question="what is red", answer="a red book", subject="w", perturbed_answers=("a blue book", "a song")
    )
    forget = _people("f", 4) + (text,)
    retain = _people("r", 6)
    return UnlearningData(
        name="tiny", forget=forget, retain=retain, neighbour=retain[:2], holdout=_people("h", 4), world=(world,)
    )


def test_evaluate_model_end_to_end(tokenizer, unlearning_data):
    model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.train()
    settings = EvalSettings(batch_size=4, max_new_tokens=8, max_examples=5)
    report = evaluate_model(model, tokenizer, unlearning_data, TEMPLATE, settings)
    assert model.training, "the model comes back in the mode it came in"

    assert set(report.splits) == {"forget", "retain", "neighbour", "holdout", "world"}
    assert report.splits["retain"].count == 5 and report.splits["forget"].count == 5
    assert set(report.mia_auc) == set(mia.ATTACKS) | set(mia.GRADIENT_ATTACKS)  # no reference model yet
    assert set(report.example_nll) == {"forget", "holdout"} and len(report.example_nll["holdout"]) == 4
    assert len(report.forget_truth_ratios) == 4  # the text passage has no perturbed answers
    assert report.splits["forget"].verbatim_memorisation is not None
    assert report.splits["retain"].verbatim_memorisation is None
    for name, m in report.splits.items():
        for field in ("rouge_l", "rouge_l_f1", "probability", "extraction_strength", "memorisation_accuracy"):
            assert 0.0 <= getattr(m, field) <= 1.0, (name, field)
        assert m.truth_ratio is None or 0.0 <= m.truth_ratio <= 1.0
        assert m.fluency >= 0.0 and 0.0 <= m.degenerate_fraction <= 1.0
    for value in report.mia_auc.values():
        assert 0.0 <= value <= 1.0

    s = report.summary
    assert s["forget_quality"] is None and s["privacy_leakage"] is None
    assert s["mia_auc"] == report.mia_auc["min_k++"]
    assert 0.0 <= s["model_utility"] <= 1.0
    for key in ("forget_rouge_l", "retain_rouge_l", "neighbour_rouge_l", "forget_probability", "retain_probability"):
        assert 0.0 <= s[key] <= 1.0

    # JSON round trip.
    restored = EvalReport.from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))
    assert restored == report

    # Against itself as the retain reference: identical truth ratios (p = 1) and no leakage.
    again = evaluate_model(model, tokenizer, unlearning_data, TEMPLATE, settings, retain_reference=restored)
    assert again.summary["forget_quality"] == pytest.approx(1.0)
    assert again.summary["privacy_leakage"] == pytest.approx(0.0, abs=1e-6)
    assert set(again.privacy_leakage) == set(mia.ATTACKS) | set(mia.GRADIENT_ATTACKS)
    # The reference attack against the model itself: every score is 0, every pair a tie, AUC 1/2.
    assert again.mia_auc[mia.REFERENCE_ATTACK] == pytest.approx(0.5)
    assert again.summary["mia_auc_reference"] == pytest.approx(0.5)
    assert again.mia_auc["gradnorm_l2"] == report.mia_auc["gradnorm_l2"] == report.summary["mia_auc_gradnorm"]


def test_evaluate_model_without_optional_splits(tokenizer, unlearning_data):
    model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    data = UnlearningData(name="bare", forget=unlearning_data.forget[:2], retain=unlearning_data.retain[:2])
    report = evaluate_model(model, tokenizer, data, TEMPLATE, EvalSettings(max_new_tokens=4))
    assert set(report.splits) == {"forget", "retain"}
    assert report.mia_auc == {} and report.summary["mia_auc"] is None
    assert report.probes == {} and report.example_nll == {"forget": report.example_nll["forget"]}
    assert report.summary["neighbour_rouge_l"] is None
    assert set(report.summary) == set(
        evaluate_model(model, tokenizer, unlearning_data, TEMPLATE, EvalSettings(max_new_tokens=2)).summary
    )


def test_settings_validation_and_subsample():
    with pytest.raises(ValueError, match="max_examples"):
        EvalSettings(max_examples=0)
    with pytest.raises(ValueError, match="mia_k"):
        EvalSettings(mia_k=0.0)
    examples = _people("r", 20)
    picked = subsample(examples, 5, seed=0)
    assert len(picked) == 5 and picked == subsample(examples, 5, seed=0)
    assert [examples.index(e) for e in picked] == sorted(examples.index(e) for e in picked)
    assert picked != subsample(examples, 5, seed=1)
    assert subsample(examples, None) == examples


def test_probes_are_scored_as_their_benchmarks_score_them(tokenizer, unlearning_data):
    """A choice probe's accuracy is the share of items whose right choice has the highest summed log-likelihood
    (checked against `choice_logprobs` by hand), a generation probe's score its mean ROUGE-L F1; both land in the
    report and in the summary as probe_<name>, and the probe's items are capped like a split's."""
    from dataclasses import replace as copy_with

    from orchestrator.data.schema import Probe, ProbeItem
    from orchestrator.evaluation.probes import choice_accuracy, choice_logprobs

    model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    choices = ("river", "town", "city", "book")
    items = tuple(ProbeItem(id=f"q{i}", prompt=f"where does {name} live", target=choices[i % 4], choices=choices,
                            answer=i % 4) for i, name in enumerate("Ada Bo Cy Di Ed Fay".split()))
    qa = tuple(ProbeItem(id=f"k{i}", prompt=f"Question: who is {name} Answer:", target="the old poem")
               for i, name in enumerate("Gus Hal Ivy".split()))
    data = copy_with(unlearning_data, probes=(Probe("hazard", "choice", "forget", items),
                                              Probe("facts", "qa", "utility", qa, max_new_tokens=4)))
    settings = EvalSettings(batch_size=4, max_new_tokens=4, max_examples=5)
    report = evaluate_model(model, tokenizer, data, TEMPLATE, settings)

    kept = subsample(items, 5)  # the probe's items capped by hashed id, as a split's examples
    scores = choice_logprobs(model, tokenizer, "", kept, batch_size=2, max_length=settings.max_length)
    by_hand = np.mean([int(np.argmax(s)) == item.answer for s, item in zip(scores, kept)])
    assert report.probes["hazard"]["count"] == 5
    assert report.probes["hazard"]["accuracy"] == pytest.approx(by_hand)
    assert report.summary["probe_hazard"] == report.probes["hazard"]["score"] == pytest.approx(by_hand)
    assert choice_accuracy([np.array([0.0, -1.0]), np.array([-2.0, -1.0])], [0, 0]) == 0.5
    assert report.probes["facts"]["kind"] == "qa" and 0.0 <= report.summary["probe_facts"] <= 1.0
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))).probes == report.probes
