"""RMU pinned by hand on a one-layer lookup model and against an explicit-loop implementation on the tiny Llama.

Lookup model: decoder layer 0 maps token k to the row k of a table (hidden size 2); the steered layer is 0.
- Forget: the labelled positions hold token 0, whose activation is (0, 0), so each counts
  1/d ||0 - c u||^2 = c^2 / d = c^2 / 2 whatever u is (||u|| = 1); the unlabelled positions hold token 1 and must
  not count. FORGET = c^2 / 2.
- Retain: model rows 0 -> (0, 0), 1 -> (1, 3); frozen reference rows all (0, 0). A token 1 counts (1 + 9) / 2 = 5,
  a token 0 counts 0. Row A labels tokens 1, 1, 0: mean 10/3; row B labels one token 1 (its unlabelled token 1
  must not count): mean 5. Rows first, then the batch (open-unlearning `compute_activation_loss`):
      RETAIN = (10/3 + 5) / 2 = 25/6        (a token mean would be 15/4).
  d RETAIN / d row 1 = ((2/3) + 1) / 2 * (row 1 - 0) = 5/6 * (1, 3); the forget term gives row 1 nothing (its
  token 1 is never labelled).
loss = gamma FORGET + alpha RETAIN.
"""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

import pytest
import torch

import methods
from methods.hyperparameters import RMUHyperparameters
from methods.rmu import decoder_layers, layer_output
from orchestrator.models.loading import tiny_llama
from tests.conftest import VOCAB, make_part
from tests.methods.fakes import Bigram, build, part  # noqa: F401  (build is a fixture)


class Lookup(torch.nn.Module):
    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(table))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[input_ids]


class LookupLM(torch.nn.Module):
    """`model.model.layers[0]` is a table lookup; the "logits" are its output (RMU never reads them)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([Lookup(table)])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.model.layers[0](input_ids))


MODEL_ROWS = [[0.0, 0.0], [1.0, 3.0]]
FROZEN_ROWS = [[0.0, 0.0], [0.0, 0.0]]


def lookup_batch():
    return {
        "forget": part([([1, 0, 0, 1], [-100, 0, 0, -100]), ([1, 1, 0, 0], [-100, -100, 0, -100])]),
        "retain": part([([0, 1, 1, 0], [-100, 1, 1, 0]), ([1, 1, 0, 0], [-100, 1, -100, -100])], first_index=100),
    }


def llama(num_layers: int = 4) -> torch.nn.Module:
    return tiny_llama(VOCAB, seed=0, hidden_size=32, num_layers=num_layers, num_heads=2, intermediate_size=64)


def test_loss_by_hand_on_the_lookup_model(build):
    method = build("rmu", reference=LookupLM(FROZEN_ROWS), steering_coeff=3.0, gamma=0.5, alpha=2.0)
    model = LookupLM(MODEL_ROWS)
    loss, logs = method.loss(model, lookup_batch())
    assert logs["forget_rmu"] == pytest.approx(9.0 / 2, rel=1e-6)
    assert logs["retain_rmu"] == pytest.approx(25 / 6, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * 9.0 / 2 + 2.0 * 25 / 6, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(model.model.layers[0].weight.grad[1], 2.0 * 5 / 6 * torch.tensor([1.0, 3.0]))


def explicit_rmu(model, reference, batch, layer: int, control: list[float]) -> tuple[float, float]:
    """RMU written out with loops, on HF's hidden states (hidden_states[l + 1] is decoder layer l's output)."""

    def per_row_mean(hidden, target_of, labels):
        rows = []
        for b in range(hidden.shape[0]):
            token_errors = []
            for t in range(hidden.shape[1]):
                if labels[b, t] != -100:
                    target = target_of(b, t)
                    d = hidden.shape[2]
                    token_errors.append(sum((hidden[b, t, i].item() - target[i]) ** 2 for i in range(d)) / d)
            rows.append(sum(token_errors) / len(token_errors))
        return sum(rows) / len(rows)

    def hidden(m, p):
        with torch.no_grad():
            return m(input_ids=p["input_ids"], attention_mask=p["attention_mask"],
                     output_hidden_states=True).hidden_states[layer + 1]

    forget, retain = batch["forget"], batch["retain"]
    frozen = hidden(reference, retain)
    return (per_row_mean(hidden(model, forget), lambda b, t: control, forget["labels"]),
            per_row_mean(hidden(model, retain), lambda b, t: frozen[b, t].tolist(), retain["labels"]))


def test_loss_matches_an_explicit_implementation_on_tiny_llama(build):
    """Layer 1 of 4, conftest's batches (prompt positions and the last row's padding are unlabelled)."""
    model, reference = llama(), tiny_llama(VOCAB, seed=1, hidden_size=32, num_layers=4, num_heads=2,
                                           intermediate_size=64)
    batch = {"forget": make_part(seed=1), "retain": make_part(seed=2, offset=100)}
    method = build("rmu", reference=reference, layer=1, steering_coeff=5.0, gamma=1.5, alpha=0.5)
    loss, logs = method.loss(model, batch)
    control = method.control_vector(32).tolist()
    forget, retain = explicit_rmu(model, reference, batch, 1, control)
    assert logs["forget_rmu"] == pytest.approx(forget, rel=1e-5)
    assert logs["retain_rmu"] == pytest.approx(retain, rel=1e-5)
    assert loss.item() == pytest.approx(1.5 * forget + 0.5 * retain, rel=1e-5)


def test_the_hook_catches_the_decoder_layers_output():
    model, p = llama(), make_part(seed=1)
    with torch.no_grad():
        hooked = layer_output(model, p, 2)
        states = model(input_ids=p["input_ids"], attention_mask=p["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(hooked, states.hidden_states[3])


def test_control_vector_is_fixed_uniform_and_of_norm_steering_coeff(build):
    method = build("rmu", alpha=0.0, steering_coeff=6.5, control_seed=7)
    first = method.control_vector(32).clone()
    model, batch = llama(), {"forget": make_part(seed=1)}
    method.loss(model, batch)
    method.loss(model, batch)
    assert torch.equal(method.control_vector(32), first)
    assert first.norm().item() == pytest.approx(6.5, rel=1e-6) and bool((first >= 0).all())
    drawn = torch.rand(1, 1, 32, generator=torch.Generator().manual_seed(7))  # WMDP: rand, normalised, times c
    torch.testing.assert_close(first, (drawn / drawn.norm() * 6.5).flatten())
    assert torch.equal(build("rmu", alpha=0.0, steering_coeff=6.5, control_seed=7).control_vector(32), first)
    assert not torch.equal(build("rmu", alpha=0.0, steering_coeff=6.5, control_seed=8).control_vector(32), first)
    with pytest.raises(ValueError, match="one method instance serves one model"):
        method.control_vector(64)


def test_retain_term_is_zero_against_an_identical_reference(build):
    model = llama()
    method = build("rmu", reference=copy.deepcopy(model))
    batch = {"forget": make_part(seed=1), "retain": make_part(seed=2, offset=100)}
    loss, logs = method.loss(model, batch)
    assert logs["retain_rmu"] == 0.0
    assert loss.item() == pytest.approx(logs["forget_rmu"], rel=1e-6)


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layer, kept", [(None, [0, 1, 2]), (0, [0]), (1, [0, 1]), (3, [1, 2, 3])])
def test_restrict_trainable_keeps_wmdps_down_proj_weights(build, layer, kept):
    """Default layer on 4 layers: min(7, 4 // 2) = 2; WMDP trains down_proj of layers layer-2..layer."""
    model = llama()
    build("rmu", alpha=0.0, layer=layer).restrict_trainable(model)
    assert trainable(model) == {f"model.layers.{i}.mlp.down_proj.weight" for i in kept}


def test_restrict_trainable_with_patterns_only_freezes(build):
    model = llama()
    model.lm_head.weight.requires_grad_(False)  # frozen before: a matching pattern must not unfreeze it
    patterns = [r"lm_head", r"layers\.3\.self_attn\.q_proj"]
    build("rmu", alpha=0.0, trainable_params_regex=patterns).restrict_trainable(model)
    assert trainable(model) == {"model.layers.3.self_attn.q_proj.weight"}


def test_restrict_trainable_that_leaves_nothing_fails_in_one_line(build):
    with pytest.raises(ValueError) as err:
        build("rmu", alpha=0.0, trainable_params_regex=["no_such_weight"]).restrict_trainable(llama())
    assert "\n" not in str(err.value) and "no_such_weight" in str(err.value)


def test_restrict_trainable_through_peft_keeps_the_down_proj_adapters(build):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj", "q_proj"]))
    method = build("rmu", alpha=0.0, layer=1)
    method.restrict_trainable(model)
    names = trainable(model)
    assert names and all(re.search(r"layers\.[01]\.mlp\.down_proj\.lora_[AB]\.", n) for n in names)
    assert len(names) == 4  # lora_A and lora_B of layers 0 and 1
    loss, _ = method.loss(model, {"forget": make_part(seed=1)})  # the hook finds the layer under the wrapper
    assert torch.isfinite(loss)
    assert len(decoder_layers(model)) == 4


class EngineLike(torch.nn.Module):
    """A DeepSpeed-engine- or DDP-like wrapper: the model is its `.module`."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_the_layer_is_found_through_a_module_wrapper_and_missing_layers_fail_in_one_line(build):
    model, batch = llama(), {"forget": make_part(seed=1)}
    method = build("rmu", alpha=0.0)
    wrapped, _ = method.loss(EngineLike(model), batch)
    assert wrapped.item() == method.loss(model, batch)[0].item()
    with pytest.raises(ValueError, match=r"model\.model\.layers .*; Bigram has none$"):
        method.loss(Bigram([[0.0]]), batch)


def test_gradient_reaches_only_the_trainable_weights_and_a_step_moves_towards_the_control(build):
    model = llama()
    method = build("rmu", alpha=0.0, layer=1, steering_coeff=4.0)
    method.restrict_trainable(model)
    batch = {"forget": make_part(seed=1)}
    loss, logs = method.loss(model, batch)
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable(model) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    assert method.loss(model, batch)[1]["forget_rmu"] < logs["forget_rmu"]


def test_layer_out_of_range_fails_in_one_line(build):
    method = build("rmu", alpha=0.0, layer=4)
    calls = (lambda: method.loss(llama(), {"forget": make_part(seed=1)}), lambda: method.restrict_trainable(llama()))
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "layer 4" in message and "4 decoder layers" in message


def test_resolved_layer_is_torch_free_and_defaults_to_min_7_half_depth():
    assert RMUHyperparameters().resolved_layer(32) == 7
    assert RMUHyperparameters().resolved_layer(4) == 2
    assert RMUHyperparameters().resolved_layer(1) == 0
    assert RMUHyperparameters(layer=3).resolved_layer(4) == 3
    with pytest.raises(ValueError, match=r"RMU layer 12 is out of range: the model has 12 decoder layers"):
        RMUHyperparameters(layer=12).check_model(12)
    assert RMUHyperparameters().resolved_trainable_patterns(32)[0].startswith(r"(^|\.)layers\.5\.")


def test_profile_parts_and_reference(build):
    profile = methods.profile("rmu")
    assert profile.parts == ("forget", "retain") and profile.needs_reference
    off = methods.profile("rmu", {"alpha": 0.0})
    assert off.parts == ("forget",) and not off.needs_reference
    with pytest.raises(ValueError, match="reference"):
        build("rmu")
    hparams = build("rmu", alpha=0.0).hparams
    assert (hparams.steering_coeff, hparams.gamma, hparams.control_seed) == (2.0, 1.0, 42)  # open-unlearning RMU.yaml
    _, logs = build("rmu", alpha=0.0).loss(llama(), {"forget": make_part(seed=1)})
    assert set(logs) == {"forget_rmu"}
