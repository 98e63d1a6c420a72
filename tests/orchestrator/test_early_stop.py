"""train.early_stop, UnDIAL's stopping rule: the retain perplexity it measures, when it trips, how configs set it.

The fast tests score a tiny real Llama (the figure is HF's own token-weighted loss, exponentiated) and drive the
rule by hand; the slow one runs real Ray Train and checks that a run stops where its checks say and records them.
"""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.config import ConfigError, parse_config
from orchestrator.data.tokenize import IGNORE_INDEX, EncodedRow, collate
from orchestrator.worker.early_stop import PerplexityStop, even_spread, token_perplexity
from tests.orchestrator.test_evaluation import tokenizer, unlearning_data  # noqa: F401 (fixtures)
from tests.tiny_run import tiny_run

CPU = torch.device("cpu")


def _rows(n: int = 5, seed: int = 0) -> list[EncodedRow]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(3, 64, (6 + i,), generator=g).tolist()
        rows.append(EncodedRow(input_ids=ids, labels=[IGNORE_INDEX] * 3 + ids[3:], index=i))
    return rows


def test_perplexity_is_hf_token_weighted_loss_exponentiated(tiny_model):
    rows = _rows()
    batch = collate(rows, pad_token_id=0)
    with torch.no_grad():
        hf_loss = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
    # Rows of different lengths in batches of two: still the mean over every labelled token, not over batches.
    assert token_perplexity(tiny_model, rows, 0, batch_size=2, device=CPU) == pytest.approx(math.exp(hf_loss), rel=1e-5)
    tiny_model.train()
    token_perplexity(tiny_model, rows, 0, batch_size=2, device=CPU)
    assert tiny_model.training  # left as it was found
    with pytest.raises(ValueError, match="no labelled tokens"):
        token_perplexity(tiny_model, [EncodedRow([5, 6], [IGNORE_INDEX, IGNORE_INDEX], 0)], 0, 2, CPU)


def test_even_spread_keeps_order_and_reaches_the_end():
    assert even_spread(list(range(10)), 20) == list(range(10))
    assert even_spread(list(range(100)), 4) == [0, 25, 50, 75]
    assert even_spread(list(range(7)), 3) == [0, 2, 4]


def test_rule_trips_past_the_bound_after_min_epochs_and_survives_a_resume(tiny_model):
    stop = PerplexityStop(_rows(), pad_token_id=0, perplexity_rise=1.03, batch_size=4, min_epochs=1.0)
    with pytest.raises(RuntimeError, match="before start"):
        stop.check(tiny_model, CPU, 1.0, 2)
    # `agree` stands in for the workers' mean: it is what the rule sees.
    stop.start(tiny_model, CPU)
    true = stop.initial
    assert not stop.check(tiny_model, CPU, 1.0, 2, agree=lambda p: p * 1.02)  # within the bound
    assert not stop.check(tiny_model, CPU, 0.5, 1, agree=lambda p: p * 2.0)  # past it, but before min_epochs
    assert stop.stopped is None
    assert stop.check(tiny_model, CPU, 2.0, 4, agree=lambda p: p * 1.04)
    assert stop.stopped == {"epoch": 2.0, "step": 4, "ratio": pytest.approx(1.04)}
    assert [c["step"] for c in stop.checks] == [2, 1, 4]

    resumed = PerplexityStop(_rows(), 0, 1.03, 4)
    resumed.restore(stop.state())
    resumed.start(tiny_model, CPU, agree=lambda p: p * 10)  # the restored initial figure stays
    assert resumed.initial == true and resumed.stopped == stop.stopped
    summary = resumed.summary()
    assert summary["rows"] == 5 and summary["initial_perplexity"] == true and len(summary["checks"]) == 3


def test_rule_needs_retain_rows():
    with pytest.raises(ValueError, match="needs retain data"):
        PerplexityStop.from_config({"perplexity_rise": 1.03, "max_examples": 8, "min_epochs": 1}, [], 0, 4)
    built = PerplexityStop.from_config({"perplexity_rise": 1.1, "max_examples": 2, "min_epochs": 0}, _rows(), 0, 4)
    assert [r.index for r in built.rows] == [0, 2] and built.perplexity_rise == 1.1


def test_configs_set_the_rule_or_take_the_recipe():
    def early_stop(method: str, **train):
        return parse_config(tiny_run(method={"name": method}, train=train)).resolved_train()["early_stop"]

    assert early_stop("undial")["perplexity_rise"] == 1.03  # UnDIAL's recipe: its authors' rule
    assert early_stop("npo") is None
    assert early_stop("undial", early_stop=False) is None
    assert early_stop("npo", early_stop=True) == {"perplexity_rise": 1.03, "every_steps": None, "min_epochs": 1.0,
                                                  "max_examples": 64}
    assert early_stop("ga", early_stop={"perplexity_rise": 1.2, "every_steps": 5})["every_steps"] == 5
    hf = parse_config(tiny_run(method={"name": "undial"}, model={"name": "some/hub-model"})).resolved_train()
    assert hf["early_stop"]["perplexity_rise"] == 1.03
    with pytest.raises(ValueError, match="perplexity_rise"):
        parse_config(tiny_run(train={"early_stop": {"perplexity_rise": 0.9}}))
    with pytest.raises(ValueError, match="early_stop"):
        parse_config(tiny_run(train={"early_stop": {"rise": 1.1}}))


def test_a_stream_request_stops_on_its_own_retain_sample(tokenizer, unlearning_data, tmp_path):
    """In a stream the rule is asked for by the config (a recipe's default does not turn it on there), and each
    request measures the retain data that is still retained: examples named by any request so far are not."""
    from types import SimpleNamespace

    from orchestrator.data.tokenize import PromptTemplate, encode
    from orchestrator.stream.config import StreamMethod
    from orchestrator.stream.driver import stream_config
    from orchestrator.stream.method_stream import MethodStream, resolved_method
    from orchestrator.worker.batching import ROW_ID_BASE

    def stream(train):
        config = parse_config(tiny_run(train=train, stream={"methods": [{"name": "undial"}]}))
        prepared = SimpleNamespace(data=unlearning_data, template=PromptTemplate(), target_dir="unused",
                                   tokenizer_dir="unused")
        method = StreamMethod(name="undial")
        return MethodStream(config, stream_config(config), method, prepared, tokenizer, tmp_path / "undial",
                            SimpleNamespace(cpus_per_worker=1), print), resolved_method(method, config)

    excluded = {e.id for e in unlearning_data.retain[:3]}
    ruled, method = stream({"early_stop": {"max_examples": 2}})
    job = ruled._job(method, list(unlearning_data.forget[:2]), excluded)
    assert job.train.early_stop["max_examples"] == 2 and len(job.early_stop_rows) == 2
    kept = [e for e in unlearning_data.retain if e.id not in excluded]
    max_length = ruled.config.data.max_length
    expected = [encode(tokenizer, kept[j], ROW_ID_BASE["early_stop"] + j, PromptTemplate(), max_length)
                for j in even_spread(list(range(len(kept))), 2)]
    assert [(r.index, r.input_ids) for r in job.early_stop_rows] == [(r.index, r.input_ids) for r in expected]
    recipe_only, method = stream({})  # UnDIAL's recipe has the rule on for runs; a stream does not take it
    job = recipe_only._job(method, list(unlearning_data.forget[:2]), excluded)
    assert job.train.early_stop is None and job.early_stop_rows == []


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache_and_ray")
def test_a_run_stops_where_its_check_trips_and_says_so(tmp_path):
    import json

    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.unlearning import run_unlearning

    connect_ray(None, 2, progress=print)
    # Gradient ascent at a high rate makes the retained people harder to predict within the first epoch.
    base = tiny_run(method={"name": "ga"}, train={"epochs": 4, "lr": 1e-3, "batch_size": 1}, ray={"num_cpus": 2})
    stopped = run_unlearning(parse_config({**base, "output_dir": str(tmp_path / "stopped"),
                                           "train": {**base["train"], "early_stop": {"perplexity_rise": 1.01}}}),
                             progress=print)
    rule = stopped.train["early_stop"]
    assert rule["stopped"] == {"epoch": 1.0, "step": 2, "ratio": pytest.approx(rule["checks"][0]["ratio"])}
    assert rule["checks"][0]["ratio"] > 1.01 and rule["initial_perplexity"] > 1
    assert stopped.train["epochs_run"] == 1 and stopped.train["steps"] == 2
    assert stopped.settings["early_stop"]["perplexity_rise"] == 1.01
    written = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert written["train"]["early_stop"]["stopped"]["step"] == 2

    # Checked every step, from the first: the same rule stops after step 1, mid-epoch (no epoch counted as run).
    every = run_unlearning(parse_config({**base, "output_dir": str(tmp_path / "every"), "train": {
        **base["train"], "early_stop": {"perplexity_rise": 1.01, "every_steps": 1, "min_epochs": 0}}}),
        progress=print)
    assert every.train["early_stop"]["stopped"]["step"] == 1
    assert every.train["steps"] == 1 and every.train["epochs_run"] == 0
