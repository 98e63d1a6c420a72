"""The CLI's error paths: bad input is a one-line error and exit code 2, before any Ray or training starts."""

from __future__ import annotations

import pytest

from orchestrator.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert err.strip() == f"unlearn: error: config file not found: {tmp_path / 'nope.yaml'}"


def test_malformed_config(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method:\n  name: npo\n  hparams: {beta: -2}\n")
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 2
    assert "beta" in err and len(err.strip().splitlines()) == 1


def test_unknown_method_flag(capsys):
    code, _, err = run_cli(capsys, "run", "--method", "forgetify")
    assert code == 2
    assert "unknown method 'forgetify'; valid choices:" in err


def test_bad_set_override(capsys):
    code, _, err = run_cli(capsys, "run", "--set", "train.lr")
    assert code == 2
    assert "--set expects key=value" in err
    code, _, err = run_cli(capsys, "run", "--set", "train.epochs=0")
    assert code == 2 and "train.epochs" in err


def test_report_of_a_non_run_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "no summary.json" in err


def test_eval_of_a_missing_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "absent"))
    assert code == 2 and "model folder not found" in err


def test_methods_lists_every_method(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    for name in ("npo", "undial", "soul", "icu", "ofmu", "ihl_fila"):
        assert f"\n{name}\n" in f"\n{out}"


def test_no_command_is_a_usage_error():
    with pytest.raises(SystemExit) as err:
        main([])
    assert err.value.code == 2


def test_a_bad_progress_mode_answers_before_any_work(capsys, monkeypatch):
    monkeypatch.setenv("RAY_UNLEARN_PROGRESS", "fancy")
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert err.strip() == "unlearn: error: RAY_UNLEARN_PROGRESS='fancy': expected one of bars, lines, off"
