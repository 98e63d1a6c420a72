"""Reports render from summary.json alone: table, Markdown, plots, and re-rendering."""

from __future__ import annotations

import json

import pytest

from orchestrator.observe.report import rerender, text_table, write_report


def summary():
    before = {"forget_rouge_l": 1.0, "retain_rouge_l": 0.98, "forget_quality": 1e-6, "model_utility": 0.6,
              "mia_auc": 0.99, "neighbour_rouge_l": 0.97}
    after = {"forget_rouge_l": 0.3, "retain_rouge_l": 0.9, "forget_quality": 0.2, "model_utility": 0.55,
             "mia_auc": 0.6, "neighbour_rouge_l": 0.8}
    return {"method": "npo", "hyperparameters": {"beta": 0.1}, "before": before, "after": after, "seconds": 12.0,
            "timings": {"prepare": 1.0, "unlearn": 10.0, "evaluate": 1.0}, "forget_size": 80, "world_size": 1,
            "zero_stage": None, "model_dir": "m", "history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
            "retain_model": {"forget_rouge_l": 0.4}}


def test_text_table_rows():
    table = text_table(summary())
    assert "forget ROUGE-L recall" in table and "1.000" in table and "0.300" in table and "0.400" in table
    assert "1e-06" in table


def test_write_and_rerender(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(summary()))
    path = write_report(summary(), tmp_path)
    text = path.read_text()
    assert "| forget ROUGE-L recall | 1.000 | 0.300 | 0.400 |" in text
    assert (tmp_path / "before_after.png").stat().st_size > 1000
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    (tmp_path / "report.md").unlink()
    assert rerender(tmp_path).exists()


def test_rerender_needs_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        rerender(tmp_path)


def test_the_attacks_table_in_the_terminal_and_the_report(tmp_path):
    from orchestrator.attacks.recovery import attack_summary

    before = {"a": {"rouge_l": 1.0, "probability": 0.9}, "b": {"rouge_l": 0.8, "probability": 0.7}}
    after = {"a": {"rouge_l": 0.2, "probability": 0.1}, "b": {"rouge_l": 0.0, "probability": 0.1}}
    results = [{"name": "relearn", "ids": ["b"], "values": {"forget_rouge_l": 0.4, "forget_probability": 0.4},
                "seconds": 1.0, "detail": {"train_examples": 1}},
               {"name": "quantise_4bit", "ids": ["a", "b"],
                "values": {"forget_rouge_l": 0.1, "forget_probability": 0.1}, "seconds": 1.0, "detail": {}}]
    control = {"name": "relearn", "ids": ["b"], "values": {"forget_rouge_l": 0.25, "forget_probability": 0.3},
               "seconds": 1.0, "detail": {}}
    attacked = {**summary(), "attacks": attack_summary(results, before, after, {"retain_model": {"relearn": control}},
                                                       before)}
    table = text_table(attacked)
    assert "recovery attacks" in table
    # relearn, forget ROUGE-L on b: before 0.8, after 0.0, attacked 0.4 -> recovery 0.5; the retain model 0.25
    assert any(line.split() == ["relearn", "forget", "ROUGE-L", "1", "0.800", "0.000", "0.400", "0.500", "-", "0.250"]
               for line in table.splitlines()), table
    assert "recovery attacks" not in text_table(summary())
    text = write_report(attacked, tmp_path).read_text()
    assert "## Recovery attacks" in text and "| quantise_4bit | forget probability | 2 |" in text
