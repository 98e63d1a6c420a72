"""`unlearn run` end to end on a small embedded problem: real local Ray, real Ray Train, real tiny Llama.

Slow (about two minutes): run with `--run-slow`; scripts/test.sh and CI do.
"""

from __future__ import annotations

import json

import pytest
import yaml

SMALL = {
    "name": "e2e",
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                       "vocab_size": 512},
              "pretrain": {"n_people": 40, "n_stories": 2, "epochs": 1, "block_size": 64}, "finetune": {"epochs": 15, "lr": 3e-3, "batch_size": 16}},
    "data": {"synthetic": {"n_people": 20, "questions_per_person": 4}},
    "train": {"epochs": 2, "lr": 2e-4, "batch_size": 4},
    "eval": {"max_per_split": 40, "max_new_tokens": 24},
}


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path




@pytest.mark.slow
def test_unlearn_run_writes_summary_model_and_report(small_config, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from orchestrator.cli import main

    out = tmp_path / "run"
    assert main(["run", str(small_config), "--method", "graddiff", "--output", str(out)]) == 0
    printed = capsys.readouterr()
    assert "forget ROUGE-L recall" in printed.out
    assert "fine-tuning the tiny target model" in printed.err

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "graddiff"
    assert summary["hyperparameters"]["alpha"] == 1.0
    for key in ("forget_rouge_l", "retain_rouge_l", "forget_quality", "model_utility", "mia_auc"):
        assert key in summary["before"] and key in summary["after"]
        assert summary["after"][key] is not None
    assert summary["seconds"] > 0 and summary["world_size"] == 1
    assert summary["forget_size"] == 8
    assert summary["history"] and summary["history"][-1]["step"] == summary["train"]["steps"]
    throughput = summary["train"]["throughput"]
    assert 0 < throughput["tokens"] < throughput["padded_positions"] and 0 < throughput["padding_share"] < 1
    assert throughput["tokens_per_second"] > 0 and len(throughput["peak_memory_bytes_per_rank"]) == 1
    # The unlearned model is a plain HF folder that loads on its own.
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 2
    assert list((out / "model").glob("*.safetensors"))
    assert "| forget ROUGE-L recall |" in (out / "report.md").read_text()
    assert (out / "before_after.png").exists()
    # Gradient ascent on the forget set lowers its likelihood.
    assert summary["after"]["forget_probability"] < summary["before"]["forget_probability"]


@pytest.mark.slow
def test_second_run_reuses_prepared_models_and_joins_running_ray(small_config, tmp_path, capsys):
    import ray
    import ray.train

    from orchestrator.config import load_config
    from orchestrator.run.unlearning import run_unlearning

    class RecordFinal(ray.train.UserCallback):
        def __init__(self, path):
            self.path = str(path)

        def after_report(self, run_context, metrics, checkpoint):
            if metrics[0].get("final"):
                with open(self.path, "w") as f:
                    json.dump(metrics[0], f)

    assert ray.is_initialized()  # left running by the CLI run above, in this process
    messages: list[str] = []
    config = load_config(small_config).with_overrides(**{"output_dir": str(tmp_path / "again"),
                                                         "method.name": "undial"})
    final = tmp_path / "final.json"
    result = run_unlearning(config, run_name="trial-again", callbacks=[RecordFinal(final)], progress=messages.append)
    # The callback reached Ray Train's RunConfig, and the final report carried the evaluation done on the workers.
    assert json.loads(final.read_text())["after"] == result.after
    assert result.run_name == "trial-again" and result.evaluation["summary"] == result.after
    assert result.settings["cpus_per_worker"] >= 1 and result.settings["dtype"] == "float32"
    assert any("target model: cached" in m for m in messages)
    assert not any("fine-tuning" in m for m in messages)
    assert not any("starting a local Ray" in m for m in messages)
    assert result.timings["prepare"] < 30
    # The teacher's values were computed once, before the first step, and every step's lookup hit.
    cache = result.train["reference_cache"]
    assert cache["precomputed_rows"] == result.forget_size and cache["released"]
    assert cache["misses"] == 0 and cache["hits"] == result.forget_size * result.train["epochs_run"]


# A cache of their own for these real-pipeline tests, and no Ray left behind (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_cache_and_ray")


@pytest.mark.slow
def test_recovery_attacks_run_on_the_workers(small_config, tmp_path, capsys):
    """`eval.attacks: {}`: every attack runs after the evaluation; summary.json, the printed table and report.md
    carry each attack's values and recoveries, relearning is scored on the forget examples it did not train on, and
    the retain model's relearning control is there."""
    from orchestrator.cli import main

    out = tmp_path / "attacked"
    assert main(["run", str(small_config), "--method", "graddiff", "--output", str(out),
                 "--set", "eval.attacks={}", "--set", "eval.attacks.probe.few_shot=2"]) == 0
    printed = capsys.readouterr().out
    assert "recovery attacks (recovery = " in printed and "quantise_4bit" in printed
    summary = json.loads((out / "summary.json").read_text())
    attacks = summary["attacks"]
    assert list(attacks) == ["relearn", "quantise_8bit", "quantise_4bit", "rephrase", "few_shot", "worst"]
    relearn = attacks["relearn"]
    assert relearn["train_examples"] + relearn["examples"] == summary["forget_size"] == 8
    for name in ("relearn", "quantise_8bit", "quantise_4bit", "rephrase", "few_shot"):
        for metric in ("forget_rouge_l", "forget_probability"):
            value = attacks[name][metric]
            assert value["attacked"] is not None and value["before"] is not None and value["after"] is not None
    assert relearn["forget_probability"]["retain_model"]["attacked"] is not None  # the relearning control
    assert attacks["quantise_4bit"]["forget_rouge_l"]["target"]["attacked"] is not None
    assert attacks["worst"]["forget_rouge_l"]["efficacy"] is not None
    assert "## Recovery attacks" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_user_checkpoint_run_loads_no_weights_on_the_driver(small_config, tmp_path, monkeypatch):
    """`model.name: <folder>` (a user's own checkpoint): the target's and the retain model's evaluations run on a Ray
    worker, training and the after-evaluation on Ray Train workers; loading weights in the driver process raises."""
    import shutil

    import safetensors.torch
    import torch
    import transformers

    from orchestrator.config import load_config
    from orchestrator.run.prepare import prepare
    from orchestrator.run.unlearning import run_unlearning

    tiny = prepare(load_config(small_config), progress=lambda m: None)  # the embedded default's models, as files
    target, retain = tmp_path / "user-target", tmp_path / "user-retain"
    shutil.copytree(tiny.target_dir, target)
    shutil.copytree(tiny.retain_dir, retain)

    def refuse(*args, **kwargs):
        raise AssertionError("the driver loaded model weights")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    config = load_config(small_config).with_overrides(**{
        "model.name": str(target), "model.retain_model": str(retain), "model.tokenizer": tiny.tokenizer_dir,
        "output_dir": str(tmp_path / "out")})
    messages: list[str] = []
    result = run_unlearning(config, progress=messages.append)
    assert any("evaluating the target model on a Ray worker" in m for m in messages)
    assert any("evaluating the retain model on a Ray worker" in m for m in messages)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["before"]["forget_probability"] > summary["after"]["forget_probability"]
    assert result.after == summary["after"]
