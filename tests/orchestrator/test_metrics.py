"""Ray dashboard metrics: what is recorded, under which labels, and that the node's Prometheus endpoint shows it.

The pure tests need no Ray; the slow one starts a private Ray with a known metrics export port and reads the
project's series back from it (Ray exports each custom metric some seconds after it is set).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

import pytest

from orchestrator.worker.batching import UnlearningRows
from orchestrator.data.tokenize import EncodedRow
from orchestrator.observe.metrics import (ACTOR_NAME, METRICS, NAMESPACE, exported_name, record_evaluation, record_stream,
                                  record_sweep, record_training, safe_label, training_updates)
from orchestrator.worker.job import TrainJob, WorkerSettings
from orchestrator.observe.training_metrics import TrainingMetricsCallback, tokens_per_step

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            out.append((match["name"], dict(_LABEL.findall(match["labels"] or "")), float(match["value"])))
    return out


def scrape_until(url: str, wanted: dict[str, dict[str, str]], timeout_s: float = 60.0) -> dict[str, float]:
    """Poll `url` until every metric in `wanted` has a sample carrying its labels; returns the values seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = prometheus_samples(urllib.request.urlopen(url, timeout=10).read().decode())
        found = {name: value for name, labels, value in samples for want, want_labels in wanted.items()
                 if name == want and want_labels.items() <= labels.items()}
        if set(found) == set(wanted):
            return found
        assert time.monotonic() < deadline, f"not exported after {timeout_s} s: {sorted(set(wanted) - set(found))}"
        time.sleep(1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_metric_is_prefixed_and_labelled_by_names_only():
    for name, spec in METRICS.items():
        assert name.startswith("ray_unlearn_"), name
        assert set(spec.tags) <= {"run", "method", "term", "sweep", "state", "stream", "request"}, name
    assert exported_name("ray_unlearn_train_loss") == "ray_ray_unlearn_train_loss"
    assert exported_name("ray_unlearn_runs") == "ray_ray_unlearn_runs_total"


def test_a_label_that_looks_like_a_text_becomes_a_hash():
    assert safe_label("default-npo-3f2a") == "default-npo-3f2a"
    assert safe_label("req-0007") == "req-0007"
    text = "Who is Basil Mahfouz Al-Kuwaiti's father?"
    hashed = safe_label(text)
    assert hashed.startswith("sha256:") and "Basil" not in hashed and len(hashed) == 19
    assert safe_label("x" * 65).startswith("sha256:")
    assert safe_label("line\nbreak").startswith("sha256:")


def test_a_training_report_maps_to_loss_terms_and_skips_diagnostics():
    report = {"loss": 1.25, "forget_npo": 2.5, "forget_log_ratio": -0.3, "retain_nll": 0.4, "step": 6, "epoch": 1.5,
              "lr": 1e-4, "forget_size": 8}
    updates = {(name, tuple(sorted(tags.items()))): value for name, value, tags in training_updates("r", "npo", report,
                                                                                                    0.5, 200.0)}
    base = (("method", "npo"), ("run", "r"))
    assert updates[("ray_unlearn_train_loss", base)] == 1.25
    assert updates[("ray_unlearn_train_forget_loss", tuple(sorted(base + (("term", "forget_npo"),))))] == 2.5
    assert updates[("ray_unlearn_train_retain_loss", tuple(sorted(base + (("term", "retain_nll"),))))] == 0.4
    assert updates[("ray_unlearn_train_step_seconds", base)] == 0.5
    assert updates[("ray_unlearn_train_tokens_per_second", base)] == 200.0
    assert updates[("ray_unlearn_train_reports", base)] == 1
    terms = {dict(tags).get("term") for _, tags in updates}
    assert "forget_log_ratio" not in terms and "forget_size" not in terms


def test_the_callback_times_steps_between_reports_and_skips_checkpoint_time():
    callback = TrainingMetricsCallback("r", "npo", tokens_per_step=400.0)
    assert callback.observe({"loss": 1.0, "step": 2, "epoch": 0.5}, now=10.0) == (None, None)  # nothing to time yet
    assert callback.observe({"step": 2, "epoch": 1.0, "checkpoint": 1.0}, now=14.0) == (None, None)
    step_s, tokens_s = callback.observe({"loss": 0.9, "step": 6, "epoch": 1.5}, now=22.0)
    assert step_s == pytest.approx(2.0)  # (22 - 14) / (6 - 2): the checkpoint's 4 s are not a step's
    assert tokens_s == pytest.approx(200.0)


def test_one_callback_times_each_tagged_run_on_its_own_clock(monkeypatch):
    """Resident workers serve many runs through one Ray Train run: each report says whose it is."""
    from orchestrator.observe import training_metrics

    recorded = []
    monkeypatch.setattr(training_metrics, "record_training",
                        lambda run, method, numbers, **kw: recorded.append((run, method, dict(numbers), kw)))
    callback = TrainingMetricsCallback("resident", "resident")
    a = {"run": "a", "method": "npo", "tokens_per_step": 100.0}
    callback.observe({"loss": 1.0, "step": 1, **a}, now=0.0)
    callback.observe({"step": 3, "final": 1.0, **a}, now=1.0)  # run a ends
    b = {"run": "b", "method": "ga", "tokens_per_step": 50.0}
    assert callback.observe({"loss": 2.0, "step": 1, **b}, now=5.0) == (None, None)  # b's clock starts afresh
    assert callback.observe({"loss": 1.5, "step": 3, **b}, now=6.0) == (0.5, 100.0)
    assert [(run, method) for run, method, _, _ in recorded] == [("a", "npo"), ("b", "ga"), ("b", "ga")]
    assert all(set(numbers) <= {"loss", "step"} for _, _, numbers, _ in recorded)  # the tags are not metrics


def test_tokens_per_step_counts_the_parts_the_method_uses():
    def rows(n, length, offset=0):
        return [EncodedRow(input_ids=list(range(length)), labels=list(range(length)), index=offset + i)
                for i in range(n)]

    job = TrainJob(target_dir="unused", method_name="ga", method_hparams={}, train=WorkerSettings(batch_size=4),
                   rows=UnlearningRows(forget=rows(10, 12), retain=rows(10, 20, 100)), pad_token_id=0)
    assert tokens_per_step(job, workers=1) == 4 * 12  # GA: the forget batch alone
    graddiff = TrainJob(**{**job.__dict__, "method_name": "graddiff"})
    assert tokens_per_step(graddiff, workers=2) == 2 * 4 * (12 + 20)
    small = TrainJob(**{**job.__dict__, "rows": UnlearningRows(forget=rows(3, 12))})
    assert tokens_per_step(small, workers=2) == 2 * 2 * 12  # a worker's shard (2 rows) is smaller than the batch


def test_without_ray_recording_is_a_no_op():
    import ray

    assert not ray.is_initialized()
    record_training("r", "npo", {"loss": 1.0, "step": 1})
    record_evaluation("r", "npo", {"forget_quality": 0.5})
    record_sweep("s", done=1, running=0, failed=0)
    record_stream("s", "npo", request="q1", state="applied", latency_s=1.0)
    assert not ray.is_initialized()  # nothing started a Ray


@pytest.fixture
def private_ray_with_metrics():
    import ray

    assert not ray.is_initialized()
    port = free_port()
    ray.init(address="local", num_cpus=1, include_dashboard=False, _metrics_export_port=port)
    yield f"http://127.0.0.1:{port}/metrics"
    ray.shutdown()


@pytest.mark.slow
def test_recorded_metrics_reach_the_nodes_prometheus_endpoint(private_ray_with_metrics):
    import ray

    from orchestrator.observe.metrics import flush

    record_training("run-a", "npo", {"loss": 1.5, "forget_npo": 2.0, "retain_nll": 0.25, "step": 3, "lr": 1e-4},
                    step_seconds=0.5, tokens_per_second=123.0)
    record_evaluation("run-a", "npo", {"forget_quality": 0.42, "model_utility": 0.63, "mia_auc": 0.51,
                                       "forget_rouge_l": None})
    record_sweep("sweep-a", done=4, running=2, failed=1, best_tradeoff=0.7)
    record_stream("stream-a", "undial", queue_depth=3)
    record_stream("stream-a", "undial", request="req-7", state="rolled_back", latency_s=4.0, drift=0.05)
    record_stream("stream-a", "undial", request="req-8", state="wrong")  # not a state: dropped, not raised
    assert flush(30.0)
    actor = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)  # one named, detached actor holds the series
    assert actor is not None
    run, stream = {"run": "run-a", "method": "npo"}, {"stream": "stream-a", "method": "undial"}
    seen = scrape_until(private_ray_with_metrics, {
        "ray_ray_unlearn_train_loss": run,
        "ray_ray_unlearn_train_forget_loss": {**run, "term": "forget_npo"},
        "ray_ray_unlearn_train_tokens_per_second": run,
        "ray_ray_unlearn_eval_forget_quality": run,
        "ray_ray_unlearn_eval_mia_auc": run,
        "ray_ray_unlearn_runs_total": run,
        "ray_ray_unlearn_sweep_trials": {"sweep": "sweep-a", "state": "failed"},
        "ray_ray_unlearn_sweep_best_tradeoff": {"sweep": "sweep-a"},
        "ray_ray_unlearn_stream_queue_depth": stream,
        "ray_ray_unlearn_stream_request_drift": {**stream, "request": "req-7"},
        "ray_ray_unlearn_stream_requests_total": {**stream, "state": "rolled_back"},
        "ray_ray_unlearn_stream_request_latency_seconds_count": stream,
    })
    assert seen["ray_ray_unlearn_train_loss"] == 1.5
    assert seen["ray_ray_unlearn_eval_forget_quality"] == 0.42
    assert seen["ray_ray_unlearn_sweep_trials"] == 1.0
    assert seen["ray_ray_unlearn_stream_requests_total"] == 1.0
    text = urllib.request.urlopen(private_ray_with_metrics, timeout=10).read().decode()
    assert "ray_ray_unlearn_eval_forget_rouge_l" not in text  # None is not recorded as a value
    assert 'state="wrong"' not in text
