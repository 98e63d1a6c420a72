"""FILA: the Fisher estimate, the factorisation, and that the wrapped model computes the same function at step 0."""

from __future__ import annotations

import torch

from methods.fila import FISHER_EPS, empirical_fisher, fila_initialise, lora_target_names
from methods.numerics import forward_logits, token_mean_nll
from tests.conftest import make_part

BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_default_targets_are_every_block_linear_but_not_the_head(tiny_model):
    names = lora_target_names(tiny_model)
    assert len(names) == 2 * len(BLOCK_LINEARS)
    assert {name.rsplit(".", 1)[-1] for name in names} == set(BLOCK_LINEARS)
    assert "lm_head" not in names
    assert lora_target_names(tiny_model, ["q_proj"]) == [f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)]


def test_fisher_is_token_weighted_mean_of_squared_gradients(tiny_model):
    """Two batches with 30 and 14 labelled tokens: F = (30 g1^2 + 14 g2^2) / 44, g_i the gradient of batch i's
    token-mean NLL (csm9493/efficient-llm-unlearning measure_importance.py)."""
    first, second = make_part(seed=1), make_part(batch=2, seq=12, prompt_len=4, seed=5)
    counts = [float((p["labels"][:, 1:] != -100).sum()) for p in (first, second)]
    name = "model.layers.1.mlp.down_proj"
    weight = tiny_model.get_submodule(name).weight
    nlls = [token_mean_nll(forward_logits(tiny_model, p), p["labels"]) for p in (first, second)]
    grads = [torch.autograd.grad(nll, weight)[0] for nll in nlls]
    expected = (counts[0] * grads[0] ** 2 + counts[1] * grads[1] ** 2) / sum(counts)
    fisher = empirical_fisher(tiny_model, [first, second], {name: weight})
    torch.testing.assert_close(fisher[name], expected)


def test_fila_keeps_outputs_and_trains_only_lora(tiny_model, batch):
    forget, retain = batch["forget"], batch["retain"]
    name = "model.layers.0.mlp.up_proj"
    original_weight = tiny_model.get_submodule(name).weight.detach().clone()
    fisher_f = empirical_fisher(tiny_model, [forget], {name: tiny_model.get_submodule(name).weight})[name]
    fisher_r = empirical_fisher(tiny_model, [retain], {name: tiny_model.get_submodule(name).weight})[name]
    with torch.no_grad():
        before = forward_logits(tiny_model, forget)

    model = fila_initialise(tiny_model, [forget], [retain], rank=4, lora_alpha=8.0)

    with torch.no_grad():
        after = forward_logits(model, forget)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * len(BLOCK_LINEARS)

    # The adapter holds the Fisher-weighted rank-4 approximation: scaling * B A = diag(1/w) [diag(w) W]_4.
    layer = model.base_model.model.get_submodule(name)
    w = (fisher_f / (FISHER_EPS + fisher_r)).sum(dim=1).sqrt()
    U, S, Vh = torch.linalg.svd(w[:, None] * original_weight, full_matrices=False)
    best_rank4 = (U[:, :4] * S[:4]) @ Vh[:4]
    adapter = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(adapter, best_rank4 / (w + FISHER_EPS)[:, None], atol=1e-5, rtol=1e-4)
    assert layer.scaling["default"] == 2.0
