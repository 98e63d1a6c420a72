"""`train.gradient_checkpointing` and `train.group_by_length`: validated in the config, carried to the workers, and
checkpointing turned on by the worker's own set-up (`UnlearningWorker.build`) without changing a loss or a gradient."""

from __future__ import annotations

import pytest
import torch

from orchestrator.config import ConfigError, TrainConfig, parse_config
from orchestrator.data.tokenize import EncodedRow
from orchestrator.models.loading import tiny_llama
from orchestrator.worker import loop
from orchestrator.worker.batching import UnlearningRows, with_global_denominators
from orchestrator.worker.job import TrainJob, WorkerSettings
from orchestrator.worker.memory import is_checkpointing, set_gradient_checkpointing

VOCAB = 64


def test_the_two_train_options_default_off_and_validate():
    train = parse_config({}).train
    assert train.gradient_checkpointing is False and train.group_by_length is False
    on = parse_config({"train": {"gradient_checkpointing": True, "group_by_length": True}}).train
    assert on.gradient_checkpointing is True and on.group_by_length is True
    for key in ("gradient_checkpointing", "group_by_length"):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            parse_config({"train": {key: "sometimes"}})
        with pytest.raises(ConfigError, match=f"train.{key}"):
            parse_config({}).with_overrides(**{f"train.{key}": [1]})
        assert TrainConfig.model_fields[key].description  # documented like every other train key


def test_the_options_reach_the_worker_settings():
    from orchestrator.run.job import worker_settings

    config = parse_config({"train": {"gradient_checkpointing": True, "group_by_length": True, "cpus_per_worker": 1}})
    settings = worker_settings(config)
    assert settings.gradient_checkpointing is True and settings.group_by_length is True
    assert settings.as_dict()["gradient_checkpointing"] is True and settings.as_dict()["group_by_length"] is True


def test_the_memory_plan_counts_checkpointed_activations():
    from orchestrator.models.plan import plan_memory

    base = {"train": {"batch_size": 4}, "data": {"max_length": 128}}
    plain = plan_memory(parse_config(base), device_memory_gib=80.0)
    checkpointed = plan_memory(parse_config({**base, "train": {"batch_size": 4, "gradient_checkpointing": True}}),
                               device_memory_gib=80.0)
    activations = next(k for k in plain.breakdown if k.startswith("activations"))
    assert checkpointed.breakdown[activations] < plain.breakdown[activations] / 2
    assert checkpointed.breakdown["logits + fp32 log-softmax"] == plain.breakdown["logits + fp32 log-softmax"]
    explicit = plan_memory(parse_config(base), device_memory_gib=80.0, activation_checkpointing=True)
    assert explicit.breakdown[activations] == checkpointed.breakdown[activations]


def _rows(n: int, offset: int = 0) -> list[EncodedRow]:
    """Rows of 6..11 tokens (ids 3..63), answer labels after a 2-token prompt."""
    out = []
    for i in range(n):
        ids = [3 + (offset + 7 * i + j) % (VOCAB - 3) for j in range(6 + i % 6)]
        out.append(EncodedRow(input_ids=ids, labels=[-100, -100] + ids[2:], index=offset + i))
    return out


def _worker(monkeypatch, checkpointing: bool, method: str = "graddiff", lora: dict | None = None):
    """A worker built over a fresh tiny Llama (the same weights every call), outside Ray: rank 0 of 1, on CPU."""
    monkeypatch.setattr(loop, "worker_context", lambda use_gpu: (0, 1, torch.device("cpu")))
    settings = WorkerSettings(lr=1e-3, epochs=1, batch_size=4, lora=lora, gradient_checkpointing=checkpointing)
    job = TrainJob(target_dir="unused", method_name=method, method_hparams={}, train=settings,
                   rows=UnlearningRows(forget=_rows(8), retain=_rows(8, offset=1_000_000)), pad_token_id=0,
                   progress="off")
    worker = loop.UnlearningWorker(job, report_progress=False)
    worker.build(tiny_llama(VOCAB, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    return worker


def _loss_and_gradients(worker) -> tuple[float, dict[str, torch.Tensor], int]:
    """The method's loss on the first batch, its gradients, and how often the first block's MLP was entered (a
    pre-hook: torch's non-reentrant recompute stops once the saved tensors are rebuilt, before the MLP returns)."""
    batch = with_global_denominators(next(worker.batches.epoch(0)), world_size=1)
    model = worker.engine.model
    mlp = next(m for name, m in model.named_modules() if name.endswith("layers.0.mlp"))
    calls = []
    handle = mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    model.zero_grad(set_to_none=True)
    loss, _ = worker.method.loss(model, batch)
    loss.backward()
    handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads, len(calls)


@pytest.mark.parametrize("lora", [None, {"rank": 4, "alpha": 8.0, "target_modules": "all-linear"}],
                         ids=["full", "lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(monkeypatch, lora):
    """Full weights and LoRA over a frozen base: the same loss and gradients, to 1e-6, while the blocks really are
    recomputed in backward (the MLP runs once more per forward)."""
    plain = _worker(monkeypatch, checkpointing=False, lora=lora)
    checkpointed = _worker(monkeypatch, checkpointing=True, lora=lora)
    assert not is_checkpointing(plain.model) and is_checkpointing(checkpointed.model)
    base = checkpointed.model.get_base_model() if lora else checkpointed.model
    assert base.is_activation_checkpointing and base.config.use_cache is False

    loss, grads, forwards = _loss_and_gradients(plain)
    loss_ckpt, grads_ckpt, forwards_ckpt = _loss_and_gradients(checkpointed)
    assert forwards_ckpt == 2 * forwards  # each forward of the block is replayed once in backward
    assert loss_ckpt == pytest.approx(loss, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    if lora:
        assert all("lora_" in name for name in grads)  # the base stayed frozen
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=0, msg=name)
    assert any(g.abs().max() > 0 for g in grads_ckpt.values())


def test_setting_it_twice_or_off_again_is_idempotent():
    """A resident model serves many runs: a second `build` adds no hook, a run without checkpointing turns it off."""
    model = tiny_llama(VOCAB, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    set_gradient_checkpointing(model, False)
    assert not is_checkpointing(model)
    set_gradient_checkpointing(model, True)
    hooks = getattr(model, "_require_grads_hooks", None)
    set_gradient_checkpointing(model, True)
    assert is_checkpointing(model) and getattr(model, "_require_grads_hooks", None) is hooks
    set_gradient_checkpointing(model, False)
    assert not is_checkpointing(model)


def test_a_model_without_hf_checkpointing_is_refused_by_name():
    with pytest.raises(ValueError, match="train.gradient_checkpointing"):
        set_gradient_checkpointing(torch.nn.Linear(2, 2), True)
    set_gradient_checkpointing(torch.nn.Linear(2, 2), False)  # nothing to turn off
