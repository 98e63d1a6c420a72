"""A method's profile (computed from its hyperparameters, without torch) agrees with what the built method does:
the batch parts its loss reads, whether it calls the reference model, its optimizer, its epoch-end refinement and
its adapters. The driver plans data, memory and DeepSpeed from the profile alone, so a disagreement would load the
wrong batches or book the wrong memory."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from methods import UnlearningMethod
from methods.sophia import SophiaG

# Every registered method at its defaults, plus the hyperparameters that change a profile.
SETTINGS = [(name, {}) for name in methods.available_methods()] + [
    ("graddiff", {"alpha": 0.0}),
    ("graddiff", {"retain_loss": "kl"}),
    ("graddiff", {"retain_loss": "kl", "alpha": 0.0}),
    ("npo", {"alpha": 0.0}),
    ("simnpo", {"alpha": 0.0}),
    ("idkpo", {"alpha": 0.0}),
    ("ihl", {"alpha": 0.0}),
    ("ihl_fila", {"rank": 2, "target_modules": ["q_proj", "v_proj"]}),
    ("soul", {"objective": "ga"}),
    ("soul", {"objective": "idkpo"}),
    ("soul", {"objective": "graddiff", "objective_hparams": {"retain_loss": "kl"}}),
    ("soul", {"hessian_estimator": "gnb"}),
    ("ofmu", {"beta": 0.0}),
]
IDS = [f"{name}-{hparams}" for name, hparams in SETTINGS]


class RecordingBatch(dict):
    """A batch that remembers which parts were read."""

    def __init__(self, parts: dict) -> None:
        super().__init__(parts)
        self.read: set[str] = set()

    def __getitem__(self, key: str):
        self.read.add(key)
        return super().__getitem__(key)


def counting_reference(model: torch.nn.Module) -> tuple[torch.nn.Module, list[int]]:
    reference = copy.deepcopy(model)
    calls: list[int] = []
    reference.register_forward_hook(lambda *args: calls.append(1))
    return reference, calls


@pytest.mark.parametrize("name, hparams", SETTINGS, ids=IDS)
def test_loss_reads_exactly_the_profiles_parts_and_reference(tiny_model, batch, name, hparams):
    profile = methods.profile(name, hparams)
    reference, calls = counting_reference(tiny_model)  # every method gets one; only some may call it
    method = methods.build(name, reference=reference, **hparams)
    model = method.init_adapters(tiny_model, [batch["forget"]], [batch["retain"]])
    recording = RecordingBatch({part: batch[part] for part in profile.parts})
    loss, _ = method.loss(model, recording)
    assert torch.isfinite(loss)
    assert recording.read == set(profile.parts)
    assert bool(calls) == profile.needs_reference
    assert (method.uses_retain, method.uses_alternate, method.uses_analogous, method.needs_reference) == (
        profile.uses_retain, profile.uses_alternate, profile.uses_analogous, profile.needs_reference)


@pytest.mark.parametrize("name, hparams", SETTINGS, ids=IDS)
def test_optimizer_refinement_and_adapters_match_the_profile(tiny_model, batch, name, hparams):
    profile = methods.profile(name, hparams)
    reference = copy.deepcopy(tiny_model) if profile.needs_reference else None
    method = methods.build(name, reference=reference, **hparams)

    optimizer = method.make_optimizer(tiny_model.parameters(), lr=1e-3, weight_decay=0.0)
    assert (optimizer is None, isinstance(optimizer, SophiaG)) == (profile.optimizer == "adamw",
                                                                   profile.optimizer == "sophia")

    overrides_refinement = type(method).on_epoch_end is not UnlearningMethod.on_epoch_end
    # A refining method overrides the hook; others may override it only to count epochs (PDU), returning None.
    assert overrides_refinement or not profile.refines_forget_set
    assert (method.on_epoch_end(tiny_model, [], []) is not None) == profile.refines_forget_set

    adapted = method.init_adapters(tiny_model, [batch["forget"]], [batch["retain"]])
    if profile.adapters is None:
        assert adapted is tiny_model
    else:
        lora = {n: m for n, m in adapted.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
        assert {m.r["default"] for m in lora.values()} == {profile.adapters.rank}
        if profile.adapters.target_modules is not None:
            assert {n.rsplit(".", 1)[-1] for n in lora} == set(profile.adapters.target_modules)


def test_deepspeed_support_follows_the_hyperparameters():
    assert methods.profile("soul").supports_deepspeed
    assert not methods.profile("soul", {"hessian_estimator": "gnb"}).supports_deepspeed
    assert not methods.profile("ofmu").supports_deepspeed
    assert methods.build("ofmu").supports_deepspeed is False


def test_profile_errors_are_one_line():
    with pytest.raises(methods.MethodConfigError, match="unknown method 'forgetify'; valid choices: "):
        methods.profile("forgetify")
    with pytest.raises(methods.MethodConfigError, match="hyperparameter 'beta' = -1"):
        methods.profile("npo", {"beta": -1})


def test_profile_rejects_parts_out_of_order():
    with pytest.raises(ValueError, match="parts must start with 'forget'"):
        methods.MethodProfile("x", parts=("retain", "forget"))
    with pytest.raises(ValueError, match="full_vocab_part 'retain' is not one of the parts"):
        methods.MethodProfile("x", full_vocab_part="retain")


def test_profiles_and_hyperparameters_need_no_torch():
    """Configs, `unlearn methods` and the planner read profiles in a driver that has not imported torch."""
    import subprocess
    import sys

    code = (
        "import sys, methods\n"
        "for name in methods.available_methods():\n"
        "    methods.profile(name, {}); methods.hyperparameter_help(name)\n"
        "methods.profile('soul', {'objective': 'npo', 'objective_hparams': {'alpha': 0}})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'ray', 'peft') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


class HalfGA(UnlearningMethod):
    """A method defined outside the package: GA at half strength, on forget and retain."""

    name = "half_ga"
    Hyperparameters = methods.Hyperparameters

    def loss(self, model, batch):
        from methods.numerics import forward_logits, token_mean_nll

        forget, retain = batch["forget"], batch["retain"]
        forget_nll = token_mean_nll(forward_logits(model, forget), forget["labels"])
        return -0.5 * forget_nll + token_mean_nll(forward_logits(model, retain), retain["labels"]), {}


def test_a_registered_outside_method_is_built_with_its_profile(monkeypatch, tiny_model, batch):
    import methods.registry

    spec = methods.MethodSpec("half_ga", methods.Hyperparameters,
                              lambda h: methods.MethodProfile("half_ga", parts=("forget", "retain")),
                              f"{__name__}:HalfGA")
    monkeypatch.setattr(methods.registry, "_REGISTRY", dict(methods.registry._REGISTRY))  # this test's copy
    methods.register(spec)
    assert "half_ga" in methods.available_methods() and methods.profile("half_ga").uses_retain
    method = methods.build("half_ga")
    assert isinstance(method, HalfGA) and method.uses_retain and not method.needs_reference
    recording = RecordingBatch({part: batch[part] for part in method.profile.parts})
    method.loss(tiny_model, recording)
    assert recording.read == {"forget", "retain"}
    with pytest.raises(ValueError, match="method name 'half_ga' registered twice"):
        methods.register(methods.MethodSpec("half_ga", methods.Hyperparameters,
                                            lambda h: methods.MethodProfile("half_ga"), f"{__name__}:HalfGA"))
