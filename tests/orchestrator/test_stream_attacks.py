"""`stream.attack_every`: recovery attacks in a request stream.

Fast: when a batch ends on an attack point, per-request recovery from hand-made attack results, the worst case,
the ledger's `attacked` events, which attacks a stream runs, and the one-line refusals. Slow: a tiny stream end to
end, attacked after every applied request, with a recovery per applied request in `stream_summary.json`.
"""

from __future__ import annotations

import json

import pytest
import yaml

from orchestrator.attacks.config import AttacksConfig
from orchestrator.config import ConfigError, parse_config
from orchestrator.stream.attacks import (AttackOutcome, AttackPoint, attack_due, describe_point, point_summary,
                                         request_recovery, stream_attacks, worst_recovery)
from orchestrator.stream.config import StreamConfig
from orchestrator.stream.ledger import Ledger
from tests.orchestrator.test_stream import kills


# --- when to attack ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("applied_before, batch, every, due", [
    (0, 1, 1, True), (1, 1, 1, True),  # every applied request
    (0, 1, 2, False), (1, 1, 2, True), (2, 1, 2, False), (3, 1, 2, True),  # after the 2nd, 4th, ...
    (1, 3, 2, True),  # a coalesced batch 2..4 crosses two multiples: one attack point
    (2, 1, 3, True), (3, 2, 3, False), (5, 2, 3, True),
    (4, 1, None, False), (3, 0, 2, False)])
def test_an_attack_point_is_where_the_applied_count_crosses_a_multiple(applied_before, batch, every, due):
    assert attack_due(applied_before, batch, every) is due


# --- per-request recovery ---------------------------------------------------------------------------------------
def _result(name: str, scores: dict[str, dict[str, float]]) -> dict:
    """An `AttackResult.to_dict()` as `run_attacks` returns it (values: means over `ids`)."""
    return {"name": name, "ids": list(scores), "values": {}, "seconds": 1.0, "detail": {}, "scores": scores}


BEFORE = {1: {"rouge_l": 0.9, "probability": 0.8, "count": 2}, 2: {"rouge_l": 0.6, "probability": 0.5, "count": 2}}
AFTER = {1: {"rouge_l": 0.1, "probability": 0.2, "count": 2}, 2: {"rouge_l": 0.6, "probability": 0.1, "count": 2}}
GROUPS = {1: ["p0/0", "p0/1"], 2: ["p1/0", "p1/1"]}


def test_recovery_per_request_is_the_attacks_mean_over_its_examples_against_its_own_before_and_after():
    relearn = _result("relearn", {"p0/1": {"rouge_l": 0.5, "probability": 0.5},  # p0/0 and p1/0 trained on
                                  "p1/1": {"rouge_l": 0.7, "probability": 0.3}})
    rephrase = _result("rephrase", {"p0/0": {"rouge_l": 0.1, "probability": 0.2},
                                    "p0/1": {"rouge_l": 0.3, "probability": 0.4}})  # request 2 has no rephrasings
    out = request_recovery([relearn, rephrase], GROUPS, BEFORE, AFTER)

    assert set(out) == {1, 2} and set(out[1]) == {"relearn", "rephrase"} and set(out[2]) == {"relearn"}
    r = out[1]["relearn"]
    assert r["rouge_l"]["attacked"] == 0.5 and r["rouge_l"]["recovery"] == pytest.approx((0.5 - 0.1) / (0.9 - 0.1))
    assert r["probability"]["recovery"] == pytest.approx((0.5 - 0.2) / (0.8 - 0.2))
    p = out[1]["rephrase"]
    assert p["rouge_l"]["attacked"] == pytest.approx(0.2) and p["rouge_l"]["recovery"] == pytest.approx(0.125)
    # Request 2's ROUGE-L did not fall: no recovery is defined, though the attacked value is kept.
    assert out[2]["relearn"]["rouge_l"] == {"attacked": 0.7, "recovery": None}
    assert out[2]["relearn"]["probability"]["recovery"] == pytest.approx((0.3 - 0.1) / (0.5 - 0.1))


def test_a_request_without_its_before_has_no_recovery_but_its_attacked_values():
    out = request_recovery([_result("quantise_4bit", {"p0/0": {"rouge_l": 0.4, "probability": 0.4}})],
                           {1: ["p0/0"]}, {}, AFTER)
    assert out[1]["quantise_4bit"]["rouge_l"] == {"attacked": 0.4, "recovery": None}


def test_the_worst_recovery_is_the_largest_over_requests_and_attacks():
    per_request = {1: {"relearn": {"rouge_l": {"attacked": 0.5, "recovery": 0.5},
                                   "probability": {"attacked": 0.2, "recovery": None}},
                       "rephrase": {"rouge_l": {"attacked": 0.8, "recovery": 0.875},
                                    "probability": {"attacked": 0.3, "recovery": 0.1}}},
                   2: {"relearn": {"rouge_l": {"attacked": 0.1, "recovery": -0.2},
                                   "probability": {"attacked": 0.4, "recovery": 0.75}}}}
    worst = worst_recovery(per_request)
    assert worst["rouge_l"] == {"recovery": 0.875, "attack": "rephrase", "request": 1}
    assert worst["probability"] == {"recovery": 0.75, "attack": "relearn", "request": 2}
    assert worst_recovery({})["rouge_l"] == {"recovery": None, "attack": None, "request": None}

    point = AttackPoint(batch=3, after_request=2, outcome=AttackOutcome(per_request, {"relearn": 1.5}))
    summary = point_summary(point, {1: "r1", 2: "r2"})
    assert list(summary["per_request"]) == ["r1", "r2"] and summary["after_request"] == 2
    assert summary["worst"]["probability"]["request"] == "r2"
    assert "worst recovery rouge_l 0.875 (rephrase" in describe_point(point)
    assert "did not run: ValueError" in describe_point(AttackPoint(3, 2, AttackOutcome({}, {}, "ValueError: x")))


# --- the ledger -------------------------------------------------------------------------------------------------
def test_an_attack_point_is_recorded_with_its_batch_as_one_event_per_applied_request(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        for seq in (1, 2):
            ledger.receive(seq, f"r{seq}", 0.0, [f"p{seq}/0"], {f"p{seq}/0": "h"}, None)
        first = ledger.start_batch([1], {"name": "ga"}, None)
        ledger.finish_batch(first, "applied", "ck1", {1: {"before": BEFORE[1]}}, {}, {})
        second = ledger.start_batch([2], {"name": "ga"}, "ck1")
        per_request = {1: {"relearn": {"rouge_l": {"attacked": 0.5, "recovery": 0.5}}}}  # r2: not scored
        point = AttackPoint(second, 2, AttackOutcome(per_request, {"relearn": 2.0}))
        with pytest.raises(AssertionError, match="only an applied batch"):
            ledger.finish_batch(second, "rolled_back", None, {}, {}, {}, attacked=(point, [1, 2]))
        ledger.finish_batch(second, "applied", "ck2", {2: {"before": BEFORE[2]}}, {}, {}, attacked=(point, [1, 2]))
        [read] = ledger.attack_points()
        events = [(e["request_id"], e["record"]["after_request"]) for e in ledger.audit() if e["event"] == "attacked"]
    finally:
        ledger.close()
    assert read == point
    assert events == [("r1", 2), ("r2", 2)]


# --- which attacks, and what is refused ---------------------------------------------------------------------------
def test_a_stream_attacks_with_eval_attacks_else_every_attack_at_its_defaults():
    off = parse_config({})
    assert stream_attacks(off, StreamConfig()) is None
    cfg = StreamConfig(attack_every=2)
    plan = stream_attacks(parse_config({"train": {"batch_size": 4}}), cfg)
    assert plan.run == AttacksConfig().run and plan.relearn.batch_size == 4
    assert plan.relearn.lr == parse_config({}).model.finetune.lr  # the tiny model's fine-tuning lr
    own = parse_config({"eval": {"attacks": {"run": ["probe"], "probe": {"few_shot": 0}}}})
    assert stream_attacks(own, cfg).run == ["probe"]


def test_attack_every_zero_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        parse_config({"stream": {"attack_every": 0}})
    assert "stream.attack_every" in str(err.value) and "\n" not in str(err.value)


def test_attacks_that_cannot_run_are_refused_in_one_line_before_ray(tmp_path, monkeypatch):
    from orchestrator.run import ray_session
    from orchestrator.stream import driver

    monkeypatch.setattr(ray_session, "connect_ray", lambda *a, **k: pytest.fail("the stream went on to start Ray"))
    output = tmp_path / "stream"
    config = parse_config({"output_dir": str(output), "stream": {"methods": [{"name": "ga"}], "attack_every": 1},
                           "eval": {"attacks": {"quantise": {"method": "nf4", "bits": [4]}}}})
    with pytest.raises(ConfigError) as err:
        driver.run_stream(config, progress=lambda m: None)
    assert str(err.value).startswith("stream.attack_every: eval.attacks.quantise.method nf4 needs a GPU")
    assert "\n" not in str(err.value) and not output.exists()


# --- end to end -------------------------------------------------------------------------------------------------
SMALL = {**kills.CONFIG, "name": "stream-attacks", "eval": {**kills.CONFIG["eval"], "gradient_mia": False},
         "stream": {"methods": [{"name": "ga"}], "eval_max_per_split": 12, "source": "synthetic",
                    "synthetic": {"count": 2}, "pace": "asap", "attack_every": 1}}


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache_and_ray")
def test_a_stream_attacked_after_every_request_records_each_applied_requests_recovery(tmp_path, stream_cache,
                                                                                      monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("RAY_UNLEARN_CACHE", str(stream_cache))  # the other stream tests' models, prepared once

    config, out = tmp_path / "stream.yaml", tmp_path / "out"
    config.write_text(yaml.safe_dump(SMALL))
    assert main(["stream", str(config), "--output", str(out)]) == 0

    summary = json.loads((out / "stream_summary.json").read_text())["methods"]["ga"]
    applied = [r["id"] for r in summary["requests"] if r["state"] == "applied"]
    assert applied == ["req-0001", "req-0002"]
    points = summary["attacks"]
    assert [p["after_request"] for p in points] == [1, 2] and all(p["error"] is None for p in points)
    for point, requests in zip(points, (applied[:1], applied)):
        assert list(point["per_request"]) == requests  # every forget set applied so far
        assert set(point["seconds"]) == {"relearn", "quantise_8bit", "quantise_4bit", "rephrase", "few_shot"}
        for attacks in point["per_request"].values():
            assert {"relearn", "quantise_8bit", "quantise_4bit"} <= set(attacks)
            for values in attacks.values():
                assert values["probability"]["attacked"] is not None and "recovery" in values["rouge_l"]
                # GA lowers the probability of what it trained on: every request has a recovery to measure.
                assert values["probability"]["recovery"] is not None
        assert set(point["worst"]) == {"rouge_l", "probability"}
        assert point["worst"]["probability"]["request"] in requests
    batch = next(b for b in summary["batches"] if b["batch"] == points[-1]["batch"])
    assert batch["timings"]["attacks"] > 0
    assert "Recovery attacks:" in (out / "stream_report.md").read_text()
