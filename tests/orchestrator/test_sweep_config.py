"""The `sweep:` section: validated at load time in one line, cells and trial overrides, the embedded default, the
summary built from hand-made trial records, and Optuna's two-objective searcher on the real library (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config, parse_config
from orchestrator.sweep import space
from orchestrator.sweep.config import DEFAULT_SWEEP_EXPERIMENT
from orchestrator.sweep.driver import check_sweep, studies, train_defaults

ROOT = Path(__file__).resolve().parents[2]


def sweep_config(**sweep):
    return parse_config({"name": "t", "sweep": {"methods": {"npo": {"space": {"beta": {"grid": [0.1, 0.5]}}}},
                                                **sweep}})


def test_the_yaml_spells_out_the_embedded_default_sweep():
    config = load_config(ROOT / "experiments" / "sweep_default.yaml")
    assert config == parse_config(DEFAULT_SWEEP_EXPERIMENT)
    assert set(config.sweep.methods) >= {"ga", "npo", "undial"} and len(config.sweep.seeds) >= 2
    assert all(len(m.space) >= 2 for m in config.sweep.methods.values())
    assert check_sweep(config) == 24  # every default cell is already in the grid


@pytest.mark.parametrize("sweep, message", [
    ({"methods": {"npo": {"space": {"betta": {"grid": [1]}}}}}, "'npo' has no hyperparameter 'betta'"),
    ({"methods": {"undial": {"space": {"gamma": {"grid": [-1]}}}}}, "gamma = -1"),
    ({"methods": {"nope": {"space": {"lr": {"grid": [1e-4]}}}}}, "unknown method 'nope'"),
    ({"methods": {"ga": {"space": {"epochs": {"grid": [2.5]}}}}}, "train.epochs must be a positive integer"),
    ({"methods": {"ga": {"space": {"lr": {"uniform": [1e-5, 1e-4]}}}}}, "search 'grid' enumerates values"),
    ({"methods": {"ga": {"space": {"lr": {"grid": [1e-4]}}}}, "search": "optuna"}, "use choice"),
    ({"methods": {"ga": {"space": {"lr": {"loguniform": [0, 1]}}}}, "search": "random"}, "lo > 0"),
    ({"methods": {"npo": {"space": {"beta": {"grid": [1]}}, "hparams": {"beta": 2}}}}, "both fixed"),
    ({"methods": {"ga": {"space": {"lr": {"grid": [1e-4]}}}}, "asha": {}, "trial_workers": "resident"},
     "trial_workers=resident cannot run with sweep.asha"),
    ({"methods": {"ga": {"space": {"lr": {"grid": [1e-4]}}}}, "trial_workers": "pooled"}, "trial_workers"),
])
def test_a_bad_space_is_one_config_error_at_load_time(sweep, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"sweep": sweep})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cli_refuses_a_bad_sweep_in_one_line_without_torch(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sweep:\n  methods:\n    ga:\n      space: {alpha: {grid: [1]}}\n")
    done = subprocess.run([sys.executable, "-c", "import sys; from orchestrator.cli import main; rc = main("
                           f"['sweep', {str(path)!r}]); assert 'torch' not in sys.modules; sys.exit(rc)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "'ga' has no hyperparameter 'alpha'" in done.stderr


def test_trials_run_on_resident_slots_unless_asha_needs_a_trainer_each():
    from orchestrator.sweep.driver import resident_trials

    assert resident_trials(sweep_config())
    assert not resident_trials(sweep_config(trial_workers="per_trial"))
    assert not resident_trials(sweep_config(asha={}))
    # A DeepSpeed trial builds its engine on the slot's workers and closes it (orchestrator/run/resident.py).
    zero3 = sweep_config().with_overrides(**{"train.deepspeed": "cluster/deepspeed/zero3.json"})
    assert resident_trials(zero3)
    check_sweep(zero3.with_overrides(**{"sweep.trial_workers": "resident"}))
    # ... but its checkpoints are every rank's shard, which only a TorchTrainer of the trial's own reports.
    checkpointed = zero3.with_overrides(**{"train.checkpoint_every_epochs": 1})
    assert not resident_trials(checkpointed)
    with pytest.raises(ConfigError, match="a DeepSpeed trial's state is sharded across its workers") as err:
        check_sweep(checkpointed.with_overrides(**{"sweep.trial_workers": "resident"}))
    assert "\n" not in str(err.value)


def test_budget_counts_cells_seeds_and_a_missing_default_cell():
    """beta {0.1, 0.5} holds NPO's default 0.1: 2 cells x 3 seeds = 6; beta {0.3, 0.5} lacks it: 3 cells, 9."""
    assert check_sweep(sweep_config(seeds=[0, 1, 2])) == 6
    other = parse_config({"sweep": {"methods": {"npo": {"space": {"beta": {"grid": [0.3, 0.5]}}}},
                                    "seeds": [0, 1, 2], "budget": 8}})
    with pytest.raises(ConfigError, match="9 trials, more than sweep.budget=8"):
        check_sweep(other)


def test_cells_mark_the_default_and_overrides_route_lr_and_epochs_to_train():
    config = parse_config(DEFAULT_SWEEP_EXPERIMENT)
    cells = space.method_cells(config.sweep, "undial", train_defaults(config, "undial"))
    assert [c["params"] for c in cells if c["is_default"]] == [{"lr": 1e-4, "gamma": 10.0}]  # recipe lr, paper gamma
    over = space.trial_overrides({"method": "undial", "params": {"lr": 1e-4, "gamma": 30.0, "epochs": 4.6}}, 1, {})
    assert over == {"method.name": "undial", "method.hparams": {"gamma": 30.0}, "train.seed": 1, "train.lr": 1e-4,
                    "train.epochs": 5}
    trial = config.with_overrides(**over, sweep=None)
    assert trial.method.hparams == {"gamma": 30.0} and trial.train.lr == 1e-4 and trial.train.epochs == 5


def test_random_cells_are_drawn_reproducibly_within_their_ranges():
    config = parse_config({"sweep": {"search": "random", "num_samples": 3, "include_default": False, "methods": {
        "npo": {"space": {"lr": {"loguniform": [1e-5, 1e-3]}, "beta": {"grid": [0.1, 0.5]}}}}}})
    cells = space.method_cells(config.sweep, "npo", train_defaults(config, "npo"))
    assert len(cells) == 6 and cells == space.method_cells(config.sweep, "npo", train_defaults(config, "npo"))
    assert all(1e-5 <= c["params"]["lr"] <= 1e-3 for c in cells)
    assert sorted({c["params"]["beta"] for c in cells}) == [0.1, 0.5]


def test_optuna_and_asha_run_one_study_per_method():
    assert studies(parse_config(DEFAULT_SWEEP_EXPERIMENT).sweep) == [("all", ["ga", "npo", "undial"])]
    asha = parse_config({**DEFAULT_SWEEP_EXPERIMENT, "sweep": {**DEFAULT_SWEEP_EXPERIMENT["sweep"], "asha": {}}})
    assert [name for name, _ in studies(asha.sweep)] == ["ga", "npo", "undial"]


def test_optuna_searcher_suggests_the_default_first_then_points_in_the_space():
    """Real Optuna TPE with two objectives behind Tune's OptunaSearch (no Ray cluster is needed to suggest)."""
    from ray.tune.search.optuna import OptunaSearch

    config = parse_config({"sweep": {"search": "optuna", "num_samples": 4, "seeds": [0, 1], "methods": {
        "undial": {"space": {"lr": {"loguniform": [1e-5, 1e-3]}, "gamma": {"choice": [3.0, 10.0, 30.0]}}}}}})
    sweep = config.sweep
    searcher = OptunaSearch(metric=["efficacy", "utility"], mode=["max", "max"], seed=0,
                            points_to_evaluate=space.optuna_start_points(sweep, "undial",
                                                                         train_defaults(config, "undial")))
    assert searcher.set_search_properties(None, None, space.optuna_space(sweep, "undial"))
    first = searcher.suggest("t0")
    assert first["cell"]["params"] == {"lr": 1e-4, "gamma": 10.0} and first["seed"] == 0
    searcher.on_trial_complete("t0", {"efficacy": 0.6, "utility": 0.8})
    second = searcher.suggest("t1")
    assert 1e-5 <= second["cell"]["params"]["lr"] <= 1e-3 and second["cell"]["params"]["gamma"] in (3.0, 10.0, 30.0)
    assert second["seed"] in (0, 1)
    # Tune's SearchGenerator merges each suggestion into the space's constants (the method's name) as here.
    from ray.tune.utils.util import merge_dicts

    assert merge_dicts(space.optuna_space(sweep, "undial"), second)["cell"]["method"] == "undial"


def test_summary_from_hand_made_trials():
    """Two methods, two cells each, one seed. GA: (efficacy, utility) (1.0, 0.1) and (0.9, 0.2); NPO (0.5, 0.9) and
    (0.4, 0.8). Scores (harmonic means): GA 2*0.1/1.1 = 0.1818 and 2*0.18/1.1 = 0.3273; NPO 0.9/1.4 = 0.6429 and
    0.64/1.2 = 0.5333. All-trials front: GA's two (neither dominates the other) and NPO (0.5, 0.9); NPO (0.4, 0.8)
    is dominated. GA's hypervolume: 1.0 * 0.1 + 0.9 * (0.2 - 0.1) = 0.19; NPO's: 0.5 * 0.9 = 0.45."""
    from orchestrator.sweep.report import build_summary, markdown

    config = parse_config({"sweep": {"tolerance": 0.05, "methods": {
        "ga": {"space": {"lr": {"grid": [1e-4, 3e-4]}}}, "npo": {"space": {"lr": {"grid": [1e-4, 3e-4]}}}}}})
    points = {("ga", 1e-4): (1.0, 0.1), ("ga", 3e-4): (0.9, 0.2), ("npo", 1e-4): (0.5, 0.9), ("npo", 3e-4): (0.4, 0.8)}
    from orchestrator.sweep.analysis import tradeoff_score

    trials = [{"trial_id": f"{m}-{lr}", "method": m, "params": {"lr": lr}, "seed": 0, "status": "complete",
               "rouge_efficacy": e, "forget_quality": 0.1, "utility": u, "score": tradeoff_score(e, u),
               "score_forget_quality": tradeoff_score(0.1, u), "seconds": 10.0,
               "timings": {"train_loop": 4.0, "evaluate": 2.0}} for (m, lr), (e, u) in points.items()]
    defaults = {m: train_defaults(config, m) for m in ("ga", "npo")}
    summary = build_summary(config, trials, defaults, slots=2, sessions=[{"wall_seconds": 15.0}])
    front = summary["pareto"]["rouge_efficacy"]
    assert front["all"] == ["ga-0.0001", "ga-0.0003", "npo-0.0001"]
    assert front["per_method"]["ga"]["hypervolume"] == pytest.approx(0.19)
    assert front["per_method"]["npo"]["hypervolume"] == pytest.approx(0.45)
    ga, npo = summary["robustness"]["ga"], summary["robustness"]["npo"]
    assert ga["best"] == pytest.approx(0.36 / 1.1) and ga["near_best"] == 0.5
    assert ga["default"] == pytest.approx(0.2 / 1.1) and ga["tunability"] == pytest.approx(0.16 / 1.1)  # lr 1e-4
    assert npo["best"] == pytest.approx(0.9 / 1.4) and npo["tunability"] == 0.0 and npo["near_best"] == 0.5
    assert summary["expected_max"]["npo"] == pytest.approx([(0.9 / 1.4 + 0.64 / 1.2) / 2, 0.9 / 1.4])
    # 4 trials x (4 + 2) s of train loop and evaluation over 2 slots: 12 s ideal; 15 s wall: 1.25.
    assert summary["timing"]["ideal_seconds"] == 12.0 and summary["timing"]["wall_over_ideal"] == 1.25
    text = markdown(summary, [])
    assert ga["worst"] == pytest.approx(0.2 / 1.1)
    assert "| ga | 2 | 2 |" in text and "harmonic mean" in text


def test_trials_are_queued_longest_training_first_without_changing_any_cell():
    config = parse_config(DEFAULT_SWEEP_EXPERIMENT)
    defaults = {m: train_defaults(config, m) for m in config.sweep.methods}
    cells = [c for m in config.sweep.methods for c in space.method_cells(config.sweep, m, defaults[m])]
    queued = space.longest_first(config.sweep, cells, defaults)
    assert sorted(map(repr, queued)) == sorted(map(repr, cells))  # the same cells, reordered
    # NPO keeps a reference model (3 passes a step) for 10 epochs: first; GA at 5 epochs (2 passes): last.
    assert queued[0]["method"] == "npo" and queued[-1] == {"method": "ga", "params": {"lr": 1e-4, "epochs": 5},
                                                         "is_default": False}
    ga = [c["params"]["epochs"] for c in queued if c["method"] == "ga"]
    assert ga == sorted(ga, reverse=True)


def test_resuming_a_sweep_whose_saved_experiment_is_cut_short_names_the_file_and_keeps_it(tmp_path):
    from orchestrator.sweep.driver import CONFIG_FILE, resume_sweep

    saved = tmp_path / CONFIG_FILE
    saved.write_text('{"name": "x", "sweep": {"methods": ')
    with pytest.raises(ConfigError, match=f"{saved} cannot be read") as err:
        resume_sweep(tmp_path, progress=lambda m: None)
    assert "\n" not in str(err.value) and saved.read_text().startswith('{"name"')


def _summary_ranked_on(raw: dict, trials: list[dict], efficacy: str, winner: str) -> dict:
    """The sweep summary of `trials` ranked on `efficacy`, checked to put `winner`'s best cell first."""
    from orchestrator.sweep.report import build_summary

    config = parse_config({"sweep": {**raw, "efficacy": efficacy}})
    defaults = {m: train_defaults(config, m) for m in ("ga", "npo")}
    summary = build_summary(config, trials, defaults, slots=1, sessions=[{"wall_seconds": 2.0}])
    best = {m: summary["robustness"][m]["best"] for m in ("ga", "npo")}
    assert max(best, key=best.get) == winner, efficacy
    return summary


def test_a_sweep_can_rank_on_efficacy_against_the_retain_model():
    """GA wipes the forget set (rouge_efficacy 1.0) past the retain model (retain_efficacy 0.2); NPO stops at the
    retain model's level (0.6, 1.0). Ranked on the target (the default) GA's cell wins its score; ranked on the
    retain model NPO's does, and the report names the measure it ranks on and shows every front."""
    from orchestrator.sweep.analysis import tradeoff_score
    from orchestrator.sweep.report import build_summary, markdown

    raw = {"methods": {"ga": {"space": {"lr": {"grid": [1e-4]}}}, "npo": {"space": {"lr": {"grid": [1e-4]}}}}}
    points = {"ga": (1.0, 0.2, 0.8), "npo": (0.6, 1.0, 0.8)}  # rouge_efficacy, retain_efficacy, utility
    trials = [{"trial_id": m, "method": m, "params": {"lr": 1e-4}, "seed": 0, "status": "complete",
               "rouge_efficacy": e, "retain_efficacy": r, "forget_quality": None, "utility": u,
               "score": tradeoff_score(e, u), "score_retain": tradeoff_score(r, u), "score_forget_quality": None,
               "seconds": 1.0, "timings": {"train_loop": 1.0, "evaluate": 0.0}} for m, (e, r, u) in points.items()]
    for efficacy, winner in (("forget_rouge_l", "ga"), ("retain_model", "npo")):
        summary = _summary_ranked_on(raw, trials, efficacy, winner)
        text = markdown(summary, [])
        assert "retain_efficacy" in summary["pareto"] and "forget ROUGE-L against the retain model's" in text
    assert "use **retain_efficacy** as forget efficacy" in text
    with pytest.raises(ConfigError, match="sweep.efficacy=retain_model .* set model.retain_model"):
        check_sweep(parse_config({"model": {"name": "org/target"}, "sweep": {**raw, "efficacy": "retain_model"}}))


def test_a_sweep_can_rank_on_the_efficacy_left_under_attack():
    """GA forgets more on its face (rouge_efficacy 0.9) but relearning brings most of it back (attacked 0.2); NPO
    forgets less (0.7) and keeps it under attack (0.6). Ranked unattacked GA wins; ranked attacked NPO does, and
    the robustness table gains the attacked columns."""
    from orchestrator.sweep.analysis import attacked_efficacy, trial_metrics, tradeoff_score
    from orchestrator.sweep.report import build_summary, markdown

    worst = {"worst": {"forget_rouge_l": {"attack": "relearn", "recovery": 0.7, "efficacy": 0.2}}}
    assert attacked_efficacy(0.9, worst) == 0.2 and attacked_efficacy(0.1, worst) == 0.1
    assert attacked_efficacy(0.9, None) is None
    metrics = trial_metrics({"forget_rouge_l": 1.0, "model_utility": 0.5}, {"forget_rouge_l": 0.1,
                                                                            "model_utility": 0.5}, attacks=worst)
    assert metrics["attacked_efficacy"] == 0.2 and metrics["worst_recovery"] == 0.7
    assert metrics["score_attacked"] == pytest.approx(tradeoff_score(0.2, 1.0))

    raw = {"methods": {"ga": {"space": {"lr": {"grid": [1e-4]}}}, "npo": {"space": {"lr": {"grid": [1e-4]}}}},
           "attacks": True}
    points = {"ga": (0.9, 0.2, 0.7), "npo": (0.7, 0.6, 0.1)}  # rouge_efficacy, attacked_efficacy, worst recovery
    trials = [{"trial_id": m, "method": m, "params": {"lr": 1e-4}, "seed": 0, "status": "complete",
               "rouge_efficacy": e, "attacked_efficacy": a, "worst_recovery": w, "retain_efficacy": None,
               "forget_quality": None, "utility": 0.9, "score": tradeoff_score(e, 0.9),
               "score_attacked": tradeoff_score(a, 0.9), "score_retain": None, "score_forget_quality": None,
               "seconds": 1.0, "timings": {"train_loop": 1.0, "evaluate": 0.0}} for m, (e, a, w) in points.items()]
    for efficacy, winner in (("forget_rouge_l", "ga"), ("attacked", "npo")):
        summary = _summary_ranked_on(raw, trials, efficacy, winner)
    text = markdown(summary, [])
    assert "use **attacked_efficacy** as forget efficacy" in text
    assert "| ga | 0.900 | 0.200 | 0.700 |" in text and "attacked_efficacy" in summary["pareto"]
    with pytest.raises(ConfigError, match="sweep.efficacy=attacked .* set sweep.attacks"):
        check_sweep(parse_config({"sweep": {**raw, "attacks": False, "efficacy": "attacked"}}))
