"""Shared fixtures: tiny real transformers models and hand-made batches; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

# Tiny tensors: one thread is as fast as two and does not fight other processes for the cores.
torch.set_num_threads(1)

from orchestrator.models.loading import tiny_llama

VOCAB = 64


def make_part(batch: int = 4, seq: int = 12, prompt_len: int = 4, vocab: int = VOCAB, seed: int = 0, offset: int = 0):
    """A batch part in the methods' layout: random tokens, prompt labels -100, last row padded by two tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, seq), generator=g)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    labels = input_ids.clone()
    labels[:, :prompt_len] = -100
    attention_mask[-1, -2:] = 0
    labels[-1, -2:] = -100
    input_ids[-1, -2:] = 0
    index = torch.arange(offset, offset + batch)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "index": index}


@pytest.fixture(scope="module")
def isolated_cache_and_ray(tmp_path_factory):
    """A module's own tiny-model cache (RAY_UNLEARN_CACHE) and, after it, no Ray left running in this process:
    for modules that run the real pipeline (`pytestmark = pytest.mark.usefixtures("isolated_cache_and_ray")`)."""
    import ray

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_UNLEARN_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def tiny_model():
    return tiny_llama(VOCAB, seed=0, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture
def batch():
    return {
        "forget": make_part(seed=1),
        "retain": make_part(seed=2, offset=100),
        "alternate": make_part(seed=3),
        "analogous": make_part(seed=4, offset=200),
    }


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the slow end-to-end tests (.ci/run does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --run-slow (scripts/test.sh does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
