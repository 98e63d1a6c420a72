"""Every shipped experiment YAML (recursively) loads and validates, and the 7B recipes fit the GPUs they name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.config import ExperimentConfig, load_config
from orchestrator.models.plan import plan_memory

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml")) + sorted((ROOT / "experiments").rglob("*.yml"))
RECIPES_7B = [p for p in EXPERIMENTS if re.search(r"_7b_", p.name)]


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.fixture(autouse=True)
def at_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs name files (cluster/deepspeed/*.json, experiments/data/*) from the root


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 6 and len(RECIPES_7B) >= 4


@pytest.mark.parametrize("path", EXPERIMENTS, ids=ids(EXPERIMENTS))
def test_experiment_loads_and_validates(path):
    config = load_config(path)
    assert config.name


def flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key: value})
    return out


def test_default_yaml_is_the_embedded_default():
    spelled = flatten(load_config(ROOT / "experiments" / "default.yaml").model_dump())
    embedded = flatten(ExperimentConfig().model_dump())
    differ = {k: (spelled.get(k), embedded.get(k)) for k in spelled.keys() | embedded.keys()
              if spelled.get(k) != embedded.get(k)}
    assert not differ, f"experiments/default.yaml (yaml, code) differs from ExperimentConfig(): {differ}"


def test_text_corpus_example_loads_its_sample_files():
    from orchestrator.run.prepare import load_data

    data = load_data(load_config(ROOT / "experiments" / "text_corpus.yaml").data)
    assert data.forget and data.retain and data.holdout


@pytest.mark.parametrize("path", RECIPES_7B, ids=ids(RECIPES_7B))
def test_7b_recipe_fits_80_gib_gpus_and_says_so(path):
    config = load_config(path)
    assert config.train.use_gpu and config.train.deepspeed == "cluster/deepspeed/zero3.json"
    assert config.data.source == "tofu" and config.model.dtype == "bfloat16"
    plan = plan_memory(config, device_memory_gib=80.0)
    assert plan.fits, plan.reason
    header = path.read_text().split("\nname:")[0]
    assert f"{config.train.workers} GPUs with 80 GB" in header
    assert f"unlearn plan {path.relative_to(ROOT)}" in header
