"""Recovery attacks (issue 28 item 1): quantisation on hand-built weights, recovery on hand-made numbers, the
relearning split and what the attack trains on, the prompt attacks, and all of them on a tiny Llama."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

import orchestrator.attacks.run as attack_run
from orchestrator.attacks.config import AttacksConfig, resolved
from orchestrator.attacks.prompts import few_shot_template, original_id, rephrased
from orchestrator.attacks.quantise import quantise_model, quantise_rtn, quantised_layers
from orchestrator.attacks.recovery import attack_summary, recovery, worst_case
from orchestrator.attacks.relearn import benign_slice, relearning_split
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import EvalSettings
from orchestrator.models.loading import tiny_llama
from tests.word_tokenizer import word_tokenizer

TEMPLATE = PromptTemplate()
NAMES = "Ada Bo Cy Di Ed Fay Gus Hal Ivy Jo Kim Lu".split()
PLACES = "river town city hill lake farm".split()
WORDS = "Question: Answer: where does live the in who is at home now".split() + NAMES + PLACES


# --- quantisation -------------------------------------------------------------------------------------------------

def test_weights_on_the_grid_come_back_exactly():
    """A row whose values are min + k * scale for integers k in 0..15 is a 4-bit group's exact grid."""
    scale, low = 0.25, -1.0
    codes = torch.tensor([[0, 15, 3, 7, 9, 1, 14, 8], [5, 0, 15, 2, 2, 11, 6, 4]], dtype=torch.float32)
    weight = low + scale * codes
    assert torch.equal(quantise_rtn(weight, bits=4, group_size=8), weight)


def test_rounding_error_is_at_most_half_a_step_per_group():
    torch.manual_seed(0)
    weight = torch.randn(6, 20)  # group size 8: groups of 8, 8 and a short one of 4
    for bits in (8, 4):
        rounded = quantise_rtn(weight, bits, group_size=8)
        for start in (0, 8, 16):
            group, back = weight[:, start:start + 8], rounded[:, start:start + 8]
            step = (group.amax(1) - group.amin(1)) / (2**bits - 1)
            assert ((group - back).abs() <= step[:, None] / 2 + 1e-6).all()
        levels = {round(float(v), 5) for v in rounded[0, :8]}
        assert len(levels) <= 2**bits
    error8 = (quantise_rtn(weight, 8, 8) - weight).abs().mean()
    error4 = (quantise_rtn(weight, 4, 8) - weight).abs().mean()
    assert 0 < error8 < error4


def test_a_constant_group_and_the_dtype_are_kept():
    weight = torch.full((2, 4), 0.3, dtype=torch.bfloat16)
    back = quantise_rtn(weight, 4, 128)
    assert back.dtype == torch.bfloat16 and torch.equal(back, weight)
    with pytest.raises(ValueError, match="2-D"):
        quantise_rtn(torch.zeros(3), 4, 8)


def test_every_linear_layer_but_the_head_is_rounded():
    model = tiny_llama(64, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = quantise_model(model, bits=4, group_size=16)
    names = quantised_layers(model)
    assert layers == len(names) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert "lm_head" not in names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"{n}.weight" for n in names}


# --- recovery -----------------------------------------------------------------------------------------------------

def test_recovery_on_hand_made_numbers():
    assert recovery(before=0.9, after=0.1, attacked=0.5) == pytest.approx(0.5)
    assert recovery(0.9, 0.1, 0.9) == pytest.approx(1.0)
    assert recovery(0.9, 0.1, 0.05) == pytest.approx(-0.0625)  # the attack made it forget more
    assert recovery(0.5, 0.5, 0.7) is None  # unlearning lowered nothing: no recovery is defined
    assert recovery(0.4, 0.6, 0.7) is None
    assert recovery(None, 0.1, 0.2) is None and recovery(0.9, 0.1, None) is None


def test_the_summary_scores_each_attack_on_its_own_examples():
    before = {"a": {"rouge_l": 1.0, "probability": 0.9}, "b": {"rouge_l": 0.8, "probability": 0.7},
              "c": {"rouge_l": 0.6, "probability": 0.5}}
    after = {"a": {"rouge_l": 0.2, "probability": 0.1}, "b": {"rouge_l": 0.0, "probability": 0.1},
             "c": {"rouge_l": 0.2, "probability": 0.1}}
    results = [
        {"name": "relearn", "ids": ["b", "c"], "values": {"forget_rouge_l": 0.5, "forget_probability": 0.3},
         "seconds": 1.0, "detail": {"train_examples": 1}},
        {"name": "quantise_4bit", "ids": ["a", "b", "c"], "values": {"forget_rouge_l": 0.3, "forget_probability": 0.5},
         "seconds": 2.0, "detail": {}},
    ]
    control = {"name": "relearn", "ids": ["b", "c"], "values": {"forget_rouge_l": 0.2, "forget_probability": 0.2},
               "seconds": 1.0, "detail": {}}
    control_before = {"b": {"rouge_l": 0.0, "probability": 0.05}, "c": {"rouge_l": 0.1, "probability": 0.05}}
    target = {"name": "quantise_4bit", "ids": ["a", "b", "c"],
              "values": {"forget_rouge_l": 0.75, "forget_probability": 0.6}, "seconds": 1.0, "detail": {}}
    summary = attack_summary(results, before, after, {"retain_model": {"relearn": control},
                                                      "target": {"quantise_4bit": target}}, control_before)
    relearn = summary["relearn"]["forget_rouge_l"]
    # relearn on b and c: before (0.8 + 0.6) / 2 = 0.7, after 0.1, attacked 0.5 -> (0.5 - 0.1) / 0.6
    assert relearn["before"] == pytest.approx(0.7) and relearn["after"] == pytest.approx(0.1)
    assert relearn["recovery"] == pytest.approx(0.4 / 0.6)
    assert summary["relearn"]["examples"] == 2 and summary["relearn"]["train_examples"] == 1
    control_rouge = summary["relearn"]["forget_rouge_l"]["retain_model"]
    assert control_rouge["before"] == pytest.approx(0.05) and control_rouge["attacked"] == 0.2
    assert control_rouge["recovery"] == pytest.approx(0.1 / 0.6)
    assert "target" not in summary["relearn"]["forget_rouge_l"]
    assert summary["quantise_4bit"]["forget_rouge_l"]["target"] == {"attacked": 0.75}
    assert "retain_model" not in summary["quantise_4bit"]["forget_rouge_l"]
    quantised = summary["quantise_4bit"]["forget_probability"]
    assert quantised["recovery"] == pytest.approx((0.5 - 0.1) / (0.7 - 0.1))
    worst = summary["worst"]
    assert worst["forget_rouge_l"]["attack"] == "relearn"
    assert worst["forget_probability"]["attack"] == "quantise_4bit"
    # Attacked efficacy: 1 - attacked / before, the least over the attacks (relearn 1 - 0.5/0.7, quantise 1 - 0.3/0.8)
    assert worst["forget_rouge_l"]["efficacy"] == pytest.approx(1 - 0.5 / 0.7)


def test_no_attacks_give_an_empty_worst_case():
    assert worst_case({}) == {m: {"attack": None, "recovery": None, "efficacy": None}
                              for m in ("forget_rouge_l", "forget_probability")}


# --- relearning and prompts ---------------------------------------------------------------------------------------

def person(i: int, place: str) -> Example:
    name = NAMES[i % len(NAMES)]
    return Example(id=f"p{i}", question=f"where does {name} live", answer=f"{name} does live in the {place}",
                   subject=name, paraphrased_questions=(f"where is {name} at home", f"where does {name} live now"))


@pytest.fixture(scope="module")
def people() -> list[Example]:
    rng = np.random.default_rng(0)
    return [person(i, str(rng.choice(PLACES))) for i in range(len(NAMES))]


def test_the_relearning_split_is_disjoint_complete_and_stable(people):
    for fraction in (0.1, 0.25, 0.5, 0.9):
        shown, held_out = relearning_split(people, fraction, seed=0)
        assert not {e.id for e in shown} & {e.id for e in held_out}
        assert sorted(e.id for e in shown + held_out) == sorted(e.id for e in people)
        assert len(shown) == min(max(1, math.ceil(fraction * len(people))), len(people) - 1)
    assert relearning_split(people, 0.25, 0) == relearning_split(list(people), 0.25, 0)
    assert relearning_split(people, 0.25, 0) != relearning_split(people, 0.25, 1)
    with pytest.raises(ValueError, match="at least 2"):
        relearning_split(people[:1], 0.5)
    assert len(benign_slice(people, 3)) == 3
    with pytest.raises(ValueError, match="no examples"):
        benign_slice([], 3)


def test_rephrased_questions_map_back_and_few_shot_leaves_out_the_neighbours(people):
    variants = rephrased(people[:2])
    assert [v.id for v in variants] == ["p0~r0", "p0~r1", "p1~r0", "p1~r1"]
    assert {original_id(v.id) for v in variants} == {"p0", "p1"}
    assert variants[0].answer == people[0].answer and variants[0].question == "where is Ada at home"
    shots = few_shot_template(TEMPLATE, people[2:], 2, exclude=people[2:9])
    assert shots.context.count("Question: ") == 2
    assert all(e.question not in shots.context for e in people[2:9])
    assert shots.prompt(people[0]).endswith(TEMPLATE.prompt(people[0]))
    with pytest.raises(ValueError, match="needs 4"):
        few_shot_template(TEMPLATE, people[:3], 4)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer(WORDS)


def test_the_attacks_on_a_tiny_llama(tokenizer, people, monkeypatch):
    """Every attack runs, leaves the model as it was, and relearning trains only on examples it is not scored on."""
    model = tiny_llama(len(tokenizer), seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model.eval()
    state = {n: p.detach().clone() for n, p in model.state_dict().items()}
    data = UnlearningData("people", forget=tuple(people[:8]), retain=tuple(people[8:]))
    trained_on: list[str] = []
    real_relearn = attack_run.relearn

    def recording_relearn(model, tokenizer, examples, template, **kwargs):
        trained_on.extend(e.id for e in examples)
        return real_relearn(model, tokenizer, examples, template, **kwargs)

    monkeypatch.setattr(attack_run, "relearn", recording_relearn)
    attacks = resolved(AttacksConfig(probe={"few_shot": 2}), finetune_lr=1e-2, batch_size=2)
    settings = EvalSettings(max_new_tokens=4, max_length=32, batch_size=4)
    results = attack_run.run_attacks(model, tokenizer, data, data.forget, TEMPLATE, settings, attacks)
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["relearn", "quantise_8bit", "quantise_4bit", "rephrase", "few_shot"]
    relearned = by_name["relearn"]
    assert trained_on and len(trained_on) == relearned.detail["train_examples"] == 2
    assert not set(trained_on) & set(relearned.ids)
    assert sorted(trained_on + relearned.ids) == sorted(e.id for e in data.forget)
    assert by_name["rephrase"].ids == [e.id for e in data.forget]  # both phrasings count for their example
    for result in results:
        for value in result.values.values():
            assert value is not None and 0.0 <= value <= 1.0
    # The model the attacks were given is unchanged, in eval mode.
    assert all(torch.equal(p, state[n]) for n, p in model.state_dict().items()) and not model.training
