"""The gradient-norm and reference-model membership-inference attacks (issue 29 item 5).

Gradient norms are checked against an explicit per-example `.backward()` on a deep copy of a tiny Llama, the model's
gradients / flags / modes against a snapshot, and the orientation on a tiny Llama over-fitted on a few examples
(members) against examples of the same kind it never saw (non-members).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from orchestrator.data.schema import Example
from orchestrator.data.tokenize import PromptTemplate, collate
from orchestrator.evaluation import mia
from orchestrator.evaluation.gradient_mia import gradient_norm_scores, trainable_parameters
from orchestrator.evaluation.likelihood import encode_rows
from orchestrator.models.loading import tiny_llama
from tests.word_tokenizer import word_tokenizer

TEMPLATE = PromptTemplate()
NAMES = "Ada Bo Cy Di Ed Fay Gus Hal Ivy Jo Kim Lu Mo Ned Oz Pia".split()
PLACES = "river town city hill lake farm port wood".split()
COLOURS = "red blue green gold grey pink".split()
WORDS = "Question: Answer: who is where does live the of in and a likes".split() + NAMES + PLACES + COLOURS


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the test words: <pad>=0, <s>=1, </s>=2, <unk>=3."""
    return word_tokenizer(WORDS)


def person(i: int, rng: np.random.Generator) -> Example:
    name = NAMES[i]
    answer = f"{name} does live in the {rng.choice(PLACES)} and likes {rng.choice(COLOURS)} {rng.choice(PLACES)}"
    return Example(id=f"p{i}", question=f"where does {name} live", answer=answer, subject=name)


@pytest.fixture(scope="module")
def people() -> list[Example]:
    rng = np.random.default_rng(0)
    return [person(i, rng) for i in range(len(NAMES))]


def small_llama(tokenizer, seed: int = 0):
    return tiny_llama(len(tokenizer), seed=seed, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def hand_norms(model, tokenizer, example: Example) -> dict[str, float]:
    """Per-example gradient norms the plain way: zero_grad, `.backward()`, mean over tensors of each grad's p-norm."""
    model = copy.deepcopy(model)
    prompt = tokenizer.encode(TEMPLATE.prompt(example), add_special_tokens=False)
    answer = tokenizer.encode(example.answer, add_special_tokens=False)
    ids = torch.tensor([[tokenizer.bos_token_id, *prompt, *answer, tokenizer.eos_token_id]])
    start = 1 + len(prompt)  # first answer position; EOS (the last position) not scored
    targets = ids[0, start:-1]
    logits = model(input_ids=ids).logits[0, start - 1 : -2]
    loss = F.cross_entropy(logits.float(), targets)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return {
        "gradnorm_l1": float(np.mean([g.abs().sum().item() for g in grads])),
        "gradnorm_l2": float(np.mean([g.pow(2).sum().sqrt().item() for g in grads])),
        "gradnorm_linf": float(np.mean([g.abs().max().item() for g in grads])),
    }


def test_attack_names_and_the_existing_four_unchanged():
    assert mia.ATTACKS == ("loss", "zlib", "min_k", "min_k++")
    assert mia.GRADIENT_ATTACKS == ("gradnorm_l1", "gradnorm_l2", "gradnorm_linf")
    assert mia.REFERENCE_ATTACK == "reference"
    assert [mia.gradient_attack_name(p) for p in (1, 2.0, math.inf)] == list(mia.GRADIENT_ATTACKS)
    with pytest.raises(ValueError, match="p=3"):
        mia.gradient_attack_name(3)


def test_gradient_norms_match_a_per_example_backward(tokenizer, people):
    model = small_llama(tokenizer)
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen part is left out, as under LoRA
    examples = people[:3]
    scores = gradient_norm_scores(model, tokenizer, examples, TEMPLATE, max_length=64)
    assert set(scores) == set(mia.GRADIENT_ATTACKS)
    for i, ex in enumerate(examples):
        expected = hand_norms(model, tokenizer, ex)
        for name in mia.GRADIENT_ATTACKS:
            assert scores[name][i] == pytest.approx(expected[name], rel=1e-5), (name, i)
    assert np.all(scores["gradnorm_l1"] > scores["gradnorm_l2"])  # ||g||_1 >= ||g||_2 >= ||g||_inf per tensor
    assert np.all(scores["gradnorm_l2"] > scores["gradnorm_linf"])
    only_l2 = gradient_norm_scores(model, tokenizer, examples, TEMPLATE, 64, norms=(2,))
    assert list(only_l2) == ["gradnorm_l2"] and np.allclose(only_l2["gradnorm_l2"], scores["gradnorm_l2"])


def test_the_model_state_is_left_as_it_was(tokenizer, people):
    model = small_llama(tokenizer)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 5, 6, 2]]), labels=torch.tensor([[1, 5, 6, 2]])).loss.backward()
    optimizer.step()
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    params = dict(model.named_parameters())
    params["model.layers.0.mlp.up_proj.weight"].grad = None
    params["lm_head.weight"].grad.fill_(0.25)
    params["model.norm.weight"].requires_grad_(False)
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in params.items()}
    model.train()
    model.model.layers[1].eval()  # mixed modes come back module by module
    modes = {n: m.training for n, m in model.named_modules()}

    with torch.no_grad():  # an evaluation loop may call it with gradients off
        gradient_norm_scores(model, tokenizer, people[:2], TEMPLATE, 64)

    assert {n: m.training for n, m in model.named_modules()} == modes
    assert not params["model.norm.weight"].requires_grad
    assert all(p.requires_grad for n, p in params.items() if n != "model.norm.weight")
    for n, p in params.items():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n
    assert torch.equal(params["lm_head.weight"].grad, torch.full_like(params["lm_head.weight"], 0.25))
    after = optimizer.state_dict()
    assert after["param_groups"] == optimizer_state["param_groups"]
    for k, state in optimizer_state["state"].items():
        assert all(torch.equal(after["state"][k][key], value) for key, value in state.items())


def test_members_have_smaller_gradients(tokenizer, people):
    torch.manual_seed(0)
    members, non_members = people[:8], people[8:]
    model = small_llama(tokenizer, seed=1)
    batch = collate(encode_rows(tokenizer, members, TEMPLATE, 64), tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):  # over-fit the members
        optimizer.zero_grad()
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        model(**inputs).loss.backward()
        optimizer.step()
    model.eval()
    member_scores = gradient_norm_scores(model, tokenizer, members, TEMPLATE, 64)
    holdout_scores = gradient_norm_scores(model, tokenizer, non_members, TEMPLATE, 64)
    for name in mia.GRADIENT_ATTACKS:
        # membership_auc: 1 when every member scores below every non-member (lower = member).
        assert mia.membership_auc(member_scores[name], holdout_scores[name]) >= 0.9, name


def test_no_answer_token_scores_zero_and_no_examples_give_empty_arrays(tokenizer, people):
    model = small_llama(tokenizer)
    empty = Example(id="e", question="who is Ada", answer="", subject="Ada")
    scores = gradient_norm_scores(model, tokenizer, [empty, people[0]], TEMPLATE, 64)
    assert all(scores[name][0] == 0.0 and scores[name][1] > 0.0 for name in mia.GRADIENT_ATTACKS)
    none = gradient_norm_scores(model, tokenizer, [], TEMPLATE, 64)
    assert all(none[name].shape == (0,) for name in mia.GRADIENT_ATTACKS)


def test_refuses_zero3_partitioned_and_untrainable_models(tokenizer, people):
    model = small_llama(tokenizer)
    model.model.layers[0].mlp.up_proj.weight.ds_numel = 2048  # what ZeRO-3 puts on a partitioned parameter
    with pytest.raises(ValueError, match="ZeRO-3"):
        gradient_norm_scores(model, tokenizer, people[:1], TEMPLATE, 64)
    frozen = small_llama(tokenizer).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        gradient_norm_scores(frozen, tokenizer, people[:1], TEMPLATE, 64)
    with pytest.raises(ValueError, match="p=3"):
        gradient_norm_scores(small_llama(tokenizer), tokenizer, people[:1], TEMPLATE, 64, norms=(2, 3))
    assert [n for n, _ in trainable_parameters(small_llama(tokenizer))][-1] == "lm_head.weight"


def test_reference_scores_by_hand():
    target = np.array([1.0, 2.0, 0.5, 3.0])
    reference = np.array([1.5, 1.0, 0.5, 2.0])
    assert np.array_equal(mia.reference_scores(target, reference), [-0.5, 1.0, 0.0, 1.0])
    # Members: the target finds them easier than the reference does -> lower scores -> membership AUC 1.
    member = mia.reference_scores([0.2, 0.4], [1.0, 1.2])
    non_member = mia.reference_scores([1.0, 1.1], [1.0, 1.0])
    assert mia.membership_auc(member, non_member) == 1.0
    with pytest.raises(ValueError, match="reference attack"):
        mia.reference_scores(np.zeros(3), np.zeros(2))
