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
