"""Ray dashboard metrics: training, evaluation, sweeps and request streams, through `ray.util.metrics`.

The metric objects live in one long-lived named actor (`ray_unlearn_metrics` in namespace `ray_unlearn`, detached,
no CPU): Ray Train's worker processes end with each run, and a metric set from a process that has ended stops being
exported, so the drivers send their numbers to the actor and the actor holds the series for the node's Prometheus
endpoint (`ray start --metrics-export-port`), the Ray dashboard's Metrics view and `cluster/grafana/`. Ray prefixes
every custom metric with `ray_`: `ray_unlearn_train_loss` here is `ray_ray_unlearn_train_loss` in Prometheus
(`exported_name`), and a counter gains `_total`.

Every `record_*` function is fire-and-forget: it sends one actor call without waiting, never raises into the caller,
and does nothing when this process is not connected to Ray. Labels are run names, method names, sweep and stream
names and request ids only, never a forget text: a label value that looks like free text (spaces, line breaks, over
64 characters) is replaced by its hash (`safe_label`).
"""

from __future__ import annotations

import collections
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

ACTOR_NAME = "ray_unlearn_metrics"
NAMESPACE = "ray_unlearn"
LATENCY_BOUNDARIES_S = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "gauge", "counter" or "histogram"
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] | None = None


RUN = ("run", "method")
METRICS: dict[str, MetricSpec] = {
    # Training: one series per run, from each `ray.train.report` (TrainingMetricsCallback, in Train's controller).
    "ray_unlearn_train_loss": MetricSpec("gauge", "Training loss of the last report", RUN),
    "ray_unlearn_train_forget_loss": MetricSpec("gauge", "Forget term of the loss (term: the method's log key)",
                                                RUN + ("term",)),
    "ray_unlearn_train_retain_loss": MetricSpec("gauge", "Retain term of the loss (term: retain_nll, retain_kl)",
                                                RUN + ("term",)),
    "ray_unlearn_train_step": MetricSpec("gauge", "Global optimizer step of the last report", RUN),
    "ray_unlearn_train_epoch": MetricSpec("gauge", "Fractional epoch of the last report", RUN),
    "ray_unlearn_train_lr": MetricSpec("gauge", "Learning rate of the last report", RUN),
    "ray_unlearn_train_step_seconds": MetricSpec("gauge", "Mean wall seconds per step since the previous report",
                                                 RUN),
    "ray_unlearn_train_tokens_per_second": MetricSpec(
        "gauge", "Tokens per second over the global batch (real tokens of the batch parts the method uses)", RUN),
    "ray_unlearn_train_reports": MetricSpec("counter", "Progress reports taken", RUN),
    # Evaluation: the unlearned model's summary, once per run.
    "ray_unlearn_eval_forget_quality": MetricSpec("gauge", "TOFU forget quality (KS-test p-value)", RUN),
    "ray_unlearn_eval_model_utility": MetricSpec("gauge", "Model utility (harmonic mean)", RUN),
    "ray_unlearn_eval_mia_auc": MetricSpec("gauge", "Membership-inference AUC on forget vs holdout", RUN),
    "ray_unlearn_eval_forget_rouge_l": MetricSpec("gauge", "ROUGE-L recall on the forget set", RUN),
    "ray_unlearn_eval_retain_rouge_l": MetricSpec("gauge", "ROUGE-L recall on the retain set", RUN),
    "ray_unlearn_runs": MetricSpec("counter", "Unlearning runs finished and evaluated", RUN),
    # Sweeps: one series per sweep.
    "ray_unlearn_sweep_trials": MetricSpec("gauge", "Trials by state (done, running, failed)", ("sweep", "state")),
    "ray_unlearn_sweep_best_tradeoff": MetricSpec("gauge", "Best forget/utility trade-off so far", ("sweep",)),
    "ray_unlearn_sweep_best_forget_quality": MetricSpec("gauge", "Forget quality of the best trial so far",
                                                        ("sweep",)),
    "ray_unlearn_sweep_best_model_utility": MetricSpec("gauge", "Model utility of the best trial so far", ("sweep",)),
    # Request streams: one series per stream and method; drift also per request id.
    "ray_unlearn_stream_queue_depth": MetricSpec("gauge", "Requests waiting", ("stream", "method")),
    "ray_unlearn_stream_request_latency_seconds": MetricSpec(
        "histogram", "Seconds from a request's arrival to its outcome", ("stream", "method"),
        tuple(LATENCY_BOUNDARIES_S)),
    "ray_unlearn_stream_drift": MetricSpec("gauge", "Drift after the last applied request", ("stream", "method")),
    "ray_unlearn_stream_request_drift": MetricSpec("gauge", "Drift after each request",
                                                   ("stream", "method", "request")),
    "ray_unlearn_stream_requests": MetricSpec(
        "counter", "Requests by outcome (applied, failed, rolled_back, quarantined)", ("stream", "method", "state")),
}
STREAM_STATES = ("applied", "failed", "rolled_back", "quarantined")
EVALUATION_KEYS = {"forget_quality": "ray_unlearn_eval_forget_quality", "model_utility": "ray_unlearn_eval_model_utility",
                   "mia_auc": "ray_unlearn_eval_mia_auc", "forget_rouge_l": "ray_unlearn_eval_forget_rouge_l",
                   "retain_rouge_l": "ray_unlearn_eval_retain_rouge_l"}
# Logged forget_* values that are diagnostics, not loss terms.
_NOT_A_LOSS = re.compile(r"(log_ratio|logprob|mean_logprob|_size|_before)$")
_FREE_TEXT = re.compile(r"[\s]")


def exported_name(name: str) -> str:
    """The name Prometheus sees: Ray's `ray_` prefix, and `_total` on a counter."""
    spec = METRICS[name]
    return f"ray_{name}" + ("_total" if spec.kind == "counter" else "")


def safe_label(value: Any) -> str:
    """A label value that cannot carry a text: a name or id passes, anything like free text becomes a hash."""
    text = str(value)
    if text and len(text) <= 64 and not _FREE_TEXT.search(text):
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


# --- the actor ------------------------------------------------------------------------------------------------
class MetricsActor:
    """Owns the `ray.util.metrics` objects; `record` applies a batch of (name, value, tags) updates."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._metrics: dict[str, Any] = {}
        for name, spec in METRICS.items():
            if spec.kind == "gauge":
                self._metrics[name] = metrics.Gauge(name, spec.description, tag_keys=spec.tags)
            elif spec.kind == "counter":
                self._metrics[name] = metrics.Counter(name, spec.description, tag_keys=spec.tags)
            else:
                self._metrics[name] = metrics.Histogram(name, spec.description, boundaries=list(spec.boundaries),
                                                        tag_keys=spec.tags)

    def record(self, updates: list[tuple[str, float, dict[str, str]]]) -> int:
        for name, value, tags in updates:
            metric, kind = self._metrics[name], METRICS[name].kind
            if kind == "gauge":
                metric.set(value, tags=tags)
            elif kind == "counter":
                metric.inc(value, tags=tags)
            else:
                metric.observe(value, tags=tags)
        return len(updates)


_remote_class: Any = None
_handles: dict[tuple[str, str], Any] = {}
_pending: collections.deque = collections.deque(maxlen=256)


def metrics_actor() -> Any:
    """The metrics actor of the connected Ray, created on first use (get-or-create: many drivers share one)."""
    import ray

    global _remote_class
    context = ray.get_runtime_context()
    key = (context.gcs_address, context.get_job_id())
    if key not in _handles:
        if _remote_class is None:
            _remote_class = ray.remote(MetricsActor)
        _handles.clear()  # a handle of an earlier Ray (ray.shutdown, then ray.init) is no use
        _handles[key] = _remote_class.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
            max_restarts=-1).remote()
    return _handles[key]


def _send(updates: Iterable[tuple[str, float | None, Mapping[str, Any]]]) -> None:
    """Queue one actor call with the finite values among `updates`; silent when Ray is not there or fails."""
    try:
        batch = [(name, float(value), {k: safe_label(v) for k, v in tags.items()})
                 for name, value, tags in updates if finite_number(value)]
        if not batch:
            return
        import ray

        if not ray.is_initialized():
            return
        _pending.append(metrics_actor().record.remote(batch))
    except Exception:  # metrics must never break a run
        return


def flush(timeout_s: float = 2.0) -> bool:
    """Wait up to `timeout_s` for the calls sent so far to reach the actor (a process about to exit calls this)."""
    try:
        import ray

        refs = list(_pending)
        _pending.clear()
        if not refs or not ray.is_initialized():
            return True
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return len(ready) == len(refs)
    except Exception:
        return False


def finite_number(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- what the drivers call ------------------------------------------------------------------------------------
def training_updates(run: str, method: str, metrics: Mapping[str, Any], step_seconds: float | None = None,
                     tokens_per_second: float | None = None) -> list[tuple[str, Any, dict[str, str]]]:
    """The updates for one training report: loss, each forget and retain term, step, epoch, lr, timing."""
    tags = {"run": run, "method": method}
    out: list[tuple[str, Any, dict[str, str]]] = [
        ("ray_unlearn_train_loss", metrics.get("loss"), tags),
        ("ray_unlearn_train_step", metrics.get("step"), tags),
        ("ray_unlearn_train_epoch", metrics.get("epoch"), tags),
        ("ray_unlearn_train_lr", metrics.get("lr"), tags),
        ("ray_unlearn_train_step_seconds", step_seconds, tags),
        ("ray_unlearn_train_tokens_per_second", tokens_per_second, tags),
    ]
    for key, value in metrics.items():
        if key.startswith("forget_") and not _NOT_A_LOSS.search(key):
            out.append(("ray_unlearn_train_forget_loss", value, {**tags, "term": key}))
        elif key.startswith("retain_") and not _NOT_A_LOSS.search(key):
            out.append(("ray_unlearn_train_retain_loss", value, {**tags, "term": key}))
    if finite_number(metrics.get("loss")):
        out.append(("ray_unlearn_train_reports", 1, tags))
    return out


def record_training(run: str, method: str, metrics: Mapping[str, Any], *, step_seconds: float | None = None,
                    tokens_per_second: float | None = None) -> None:
    """One training report of run `run` (a `ray.train.report` dict: loss, forget_*/retain_* terms, step, lr)."""
    _send(training_updates(run, method, metrics, step_seconds, tokens_per_second))


def record_evaluation(run: str, method: str, summary: Mapping[str, Any], *, wait_s: float = 2.0) -> None:
    """The unlearned model's evaluation summary (forget_quality, model_utility, mia_auc, ROUGE-L).

    Called once at the end of a run, just before its process may exit, so it waits up to `wait_s` for delivery."""
    tags = {"run": run, "method": method}
    _send([(name, summary.get(key), tags) for key, name in EVALUATION_KEYS.items()]
          + [("ray_unlearn_runs", 1, tags)])
    if wait_s > 0:
        flush(wait_s)


def record_sweep(sweep: str, *, done: int, running: int, failed: int, best_tradeoff: float | None = None,
                 best_forget_quality: float | None = None, best_model_utility: float | None = None) -> None:
    """A sweep's state: trials done, running and failed (absolute counts, not increments) and the best so far.

    Call it whenever a trial starts or ends (a Tune `Callback`'s `on_trial_start/complete/error` in the sweep
    driver). `best_tradeoff` is the sweep's own score of its best trial (higher is better)."""
    _send([("ray_unlearn_sweep_trials", done, {"sweep": sweep, "state": "done"}),
           ("ray_unlearn_sweep_trials", running, {"sweep": sweep, "state": "running"}),
           ("ray_unlearn_sweep_trials", failed, {"sweep": sweep, "state": "failed"}),
           ("ray_unlearn_sweep_best_tradeoff", best_tradeoff, {"sweep": sweep}),
           ("ray_unlearn_sweep_best_forget_quality", best_forget_quality, {"sweep": sweep}),
           ("ray_unlearn_sweep_best_model_utility", best_model_utility, {"sweep": sweep})])


def record_stream(stream: str, method: str, *, request: str | None = None, queue_depth: int | None = None,
                  latency_s: float | None = None, drift: float | None = None, state: str | None = None) -> None:
    """A request stream's news; pass what is known, leave the rest None.

    `queue_depth`: requests waiting now. With a request's outcome: `request` (its id, never its text), `state`
    (one of applied, failed, rolled_back, quarantined: counted once per call), `latency_s` (arrival to outcome) and
    `drift` (after it was applied)."""
    if state is not None and state not in STREAM_STATES:
        return  # an unknown state would open a series no dashboard panel shows
    tags = {"stream": stream, "method": method}
    updates: list[tuple[str, Any, dict[str, str]]] = [
        ("ray_unlearn_stream_queue_depth", queue_depth, tags),
        ("ray_unlearn_stream_request_latency_seconds", latency_s, tags),
        ("ray_unlearn_stream_drift", drift, tags),
    ]
    if request is not None:
        updates.append(("ray_unlearn_stream_request_drift", drift, {**tags, "request": request}))
    if state is not None:
        updates.append(("ray_unlearn_stream_requests", 1, {**tags, "state": state}))
    _send(updates)
