"""The sweep's figures on hand-made trials: every expected value is worked out in the test's docstring."""

from __future__ import annotations

import pytest

from orchestrator.sweep import analysis


def test_pareto_front_keeps_non_dominated_points_and_ties():
    """(0.4, 0.4) is dominated by (0.5, 0.5); the two equal (0.5, 0.5) points dominate nothing of each other and
    are both kept; (0.9, 0.1) and (0.1, 0.9) are each best in one coordinate."""
    points = [(0.9, 0.1), (0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.5, 0.5)]
    assert analysis.pareto_front(points) == [0, 1, 3, 4]
    assert analysis.pareto_front([]) == []


def test_hypervolume_of_a_staircase():
    """Front (0.9, 0.1), (0.5, 0.5), (0.1, 0.9), reference (0, 0), swept by descending x:
    0.9 * 0.1 = 0.09, then 0.5 * (0.5 - 0.1) = 0.20, then 0.1 * (0.9 - 0.5) = 0.04: 0.33 in all.
    The dominated (0.4, 0.4) and the point with negative efficacy add nothing."""
    front = [(0.9, 0.1), (0.5, 0.5), (0.1, 0.9)]
    assert analysis.hypervolume(front) == pytest.approx(0.33)
    assert analysis.hypervolume(front + [(0.4, 0.4), (-0.2, 1.0)]) == pytest.approx(0.33)
    assert analysis.hypervolume([(0.5, 0.5)], reference=(0.1, 0.2)) == pytest.approx(0.4 * 0.3)
    assert analysis.hypervolume([]) == 0.0


def test_tradeoff_score_is_the_clipped_harmonic_mean():
    """e = 0.5, u = 1.0: 2 * 0.5 * 1 / 1.5 = 2/3; e = 1.2 is clipped to 1 and u = 0.5 gives the same 2/3;
    an efficacy below 0 (the model recites more than before) is clipped to 0 and scores 0."""
    assert analysis.tradeoff_score(0.5, 1.0) == pytest.approx(2 / 3)
    assert analysis.tradeoff_score(1.2, 0.5) == pytest.approx(2 / 3)
    assert analysis.tradeoff_score(-0.1, 0.9) == 0.0
    assert analysis.tradeoff_score(None, 0.9) is None


def test_trial_metrics_normalise_by_the_target():
    """Forget ROUGE-L 0.8 -> 0.2: efficacy 1 - 0.2/0.8 = 0.75; utility 0.6 -> 0.45: 0.75; score 0.75."""
    before = {"forget_rouge_l": 0.8, "model_utility": 0.6, "forget_quality": 1e-5}
    after = {"forget_rouge_l": 0.2, "model_utility": 0.45, "forget_quality": 0.3, "retain_rouge_l": 0.9}
    m = analysis.trial_metrics(before, after)
    assert m["rouge_efficacy"] == pytest.approx(0.75) and m["utility"] == pytest.approx(0.75)
    assert m["score"] == pytest.approx(0.75)
    assert m["forget_quality"] == 0.3 and m["score_forget_quality"] == pytest.approx(2 * 0.3 * 0.75 / 1.05)


def _trials(cells: dict[str, tuple[dict, list[float]]]) -> list[dict]:
    return [{"method": "m", "params": params, "seed": seed, "score": score, "efficacy": score, "utility": 1.0}
            for params, scores in cells.values() for seed, score in enumerate(scores)]


def test_robustness_near_best_share_seed_spread_and_tunability():
    """Three cells, two seeds each:
    A = lr 1e-4: scores 0.80, 0.70 -> mean 0.75, spread 0.10;
    B = lr 3e-4: scores 0.72, 0.74 -> mean 0.73, spread 0.02;
    C = lr 1e-3 (the default): scores 0.20, 0.40 -> mean 0.30, spread 0.20.
    Best mean 0.75 (A), worst 0.30 (C); tolerance 0.05: A and B are within 0.70, C is not: near_best 2/3.
    Seed spread: mean (0.10 + 0.02 + 0.20) / 3 = 0.32 / 3, max 0.20. Tunability: 0.75 - 0.30 = 0.45."""
    trials = _trials({"A": ({"lr": 1e-4}, [0.80, 0.70]), "B": ({"lr": 3e-4}, [0.72, 0.74]),
                      "C": ({"lr": 1e-3}, [0.20, 0.40])})
    r = analysis.robustness(trials, tolerance=0.05, default={"lr": 1e-3})
    assert r["cells"] == 3 and r["best"] == pytest.approx(0.75) and r["best_params"] == {"lr": 1e-4}
    assert r["near_best"] == pytest.approx(2 / 3) and r["worst"] == pytest.approx(0.30)
    assert r["seed_spread_mean"] == pytest.approx(0.32 / 3) and r["seed_spread_max"] == pytest.approx(0.20)
    assert r["default"] == pytest.approx(0.30) and r["tunability"] == pytest.approx(0.45)
    # Without the default cell among the trials there is no tunability; a wider tolerance takes in every cell.
    assert analysis.robustness(trials, 0.05, default={"lr": 5.0})["tunability"] is None
    assert analysis.robustness(trials, 0.5)["near_best"] == 1.0


def test_expected_max_matches_enumeration():
    """Scores 0.1, 0.4, 0.3, 0.2 (sorted 0.1 < 0.2 < 0.3 < 0.4), draws without replacement:
    n = 1: the mean, 0.25;
    n = 2: the six pairs' maxima 0.2, 0.3, 0.4, 0.3, 0.4, 0.4 sum to 2.0: 1/3
           (formula: (0.2 * C(1,1) + 0.3 * C(2,1) + 0.4 * C(3,1)) / C(4,2) = 2.0 / 6);
    n = 3: three of the four triples hold 0.4, the other {0.1, 0.2, 0.3} has max 0.3: (1.2 + 0.3) / 4 = 0.375;
    n = 4: the maximum, 0.4."""
    scores = [0.1, 0.4, 0.3, 0.2]
    assert analysis.expected_max_curve(scores) == pytest.approx([0.25, 1 / 3, 0.375, 0.4])
    with pytest.raises(ValueError):
        analysis.expected_max(scores, 5)


def test_marginals_average_over_the_other_dimensions():
    """lr 1e-4 appears with scores 0.8 and 0.6 (mean 0.7), lr 3e-4 with 0.2 and 0.4 (mean 0.3)."""
    trials = [{"method": "m", "params": {"lr": lr, "beta": b}, "seed": 0, "score": s, "efficacy": s, "utility": 1.0}
              for lr, b, s in ((1e-4, 0.1, 0.8), (1e-4, 0.5, 0.6), (3e-4, 0.1, 0.2), (3e-4, 0.5, 0.4))]
    rows = analysis.marginals(trials, "lr")
    assert [r["value"] for r in rows] == [1e-4, 3e-4]
    assert [r["score"] for r in rows] == pytest.approx([0.7, 0.3]) and [r["n"] for r in rows] == [2, 2]


def test_sweep_metrics_callback_counts_trials_and_keeps_the_best():
    """The dashboard's sweep figures: trials running / done / failed and the best score so far (Tune's callback
    hooks, called as Tune calls them; without Ray the metrics themselves are a no-op)."""
    from types import SimpleNamespace

    from orchestrator.sweep.monitor import SweepMetricsCallback

    monitor = SweepMetricsCallback("s")
    a, b, c = (SimpleNamespace(trial_id=t) for t in "abc")
    for trial in (a, b, c):
        monitor.on_trial_start(0, [], trial)
    monitor.on_trial_result(0, [], a, {"score": 0.4, "model_utility": 0.9})
    monitor.on_trial_result(0, [], b, {"score": 0.7, "model_utility": 0.5, "forget_quality": float("nan")})
    monitor.on_trial_complete(0, [], a)
    monitor.on_trial_error(0, [], c)
    assert (monitor.running, monitor.done, monitor.failed) == ({"b"}, {"a"}, {"c"})
    assert monitor.best == {"score": 0.7, "model_utility": 0.9}


def test_efficacy_against_the_retain_model_by_hand():
    """Target 0.9, retain model 0.5: 0.9 -> 0, 0.7 -> 0.5, 0.5 -> 1 (the goal), 0.25 -> 1 - 0.25/0.5 = 0.5, 0 -> 0."""
    from orchestrator.sweep.analysis import efficacy_against_retain

    for after, expected in ((0.9, 0.0), (0.95, 0.0), (0.7, 0.5), (0.5, 1.0), (0.25, 0.5), (0.0, 0.0)):
        assert efficacy_against_retain(0.9, 0.5, after) == pytest.approx(expected), after
    assert efficacy_against_retain(0.9, None, 0.3) is None and efficacy_against_retain(0.4, 0.5, 0.3) is None
    assert efficacy_against_retain(0.9, 0.0, 0.0) == 1.0  # a retain model that recalls nothing: 0 is the goal


def test_an_over_unlearned_model_ranks_below_the_one_closest_to_the_retain_model():
    """Two trials with the same utility: one forgets down to the retain model's forget ROUGE-L (0.54), the other
    wipes the forget set out (0.0). The target-relative score prefers the wipe; the retain-relative one does not."""
    from orchestrator.sweep.analysis import trial_metrics

    before, retain = {"forget_rouge_l": 0.99, "model_utility": 0.5}, {"forget_rouge_l": 0.54}
    close = trial_metrics(before, {"forget_rouge_l": 0.54, "model_utility": 0.45}, retain)
    wiped = trial_metrics(before, {"forget_rouge_l": 0.0, "model_utility": 0.45}, retain)
    assert wiped["score"] > close["score"]  # today's definition rewards going past the retain model
    assert close["retain_efficacy"] == pytest.approx(1.0) and wiped["retain_efficacy"] == pytest.approx(0.0)
    assert close["score_retain"] > wiped["score_retain"] == 0.0
    assert trial_metrics(before, {"forget_rouge_l": 0.3, "model_utility": 0.45})["retain_efficacy"] is None
