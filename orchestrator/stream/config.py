"""`stream:` in an experiment YAML: where the requests come from, how they are batched, and the guard.

Kept free of `orchestrator.config` imports (that module imports this one for its `stream` field).
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

import methods


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamMethod(_Section):
    """A method with its settings: one of `stream.methods`, or a request's `method` override."""

    name: str = Field(description="A registered method (`unlearn methods`).")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Its hyperparameters (paper defaults).")
    lr: float | None = Field(None, gt=0, description="Learning rate; default: train.lr, else the method's recipe.")
    epochs: int | None = Field(None, gt=0, description="Epochs over the request's items; default: as lr.")

    @pydantic.model_validator(mode="after")
    def _method_exists(self) -> "StreamMethod":
        methods.validate_hyperparameters(self.name, self.hparams)
        return self


class SyntheticRequests(_Section):
    """One fictitious person of the data set per request (the forget people first), Poisson arrivals."""

    count: int = Field(10, ge=1, description="Requests to generate.")
    rate: float = Field(0.5, gt=0, description="Mean arrivals per second (exponential inter-arrival times).")
    seed: int = Field(0, description="Seed of the arrival times.")


class PolicyConfig(_Section):
    """What to do with requests that arrive while one is being applied."""

    mode: Literal["one_at_a_time", "coalesce"] = Field(
        "one_at_a_time", description="one_at_a_time: each request is its own unlearning run; coalesce: the "
        "requests waiting when the workers are free (same method) are applied together.")
    max_batch: int = Field(4, ge=1, description="coalesce: at most this many requests per run.")
    window_s: float = Field(0.0, ge=0, description="coalesce: wait up to this long after the first waiting "
                            "request for more to arrive (their latency grows by up to the window).")


class ResurgenceSchedule(_Section):
    """Which earlier requests' forget sets are evaluated again after each batch (the resurgence matrix), so that the
    work per request stays bounded however long the stream: a rotating sample, and a full sweep now and then."""

    sample: int | None = Field(
        8, ge=1, description="Earlier requests evaluated after each batch, taken in rotation through the applied "
        "ones (every one is measured again within about applied / sample batches); null: every earlier request "
        "after every batch (the cost of a request then grows with the stream's length).")
    full_every: int | None = Field(
        50, ge=1, description="Every this many applied batches, evaluate every earlier request; null: never "
        "(an attack point, stream.attack_every, evaluates every one too).")


class StreamConfig(_Section):
    """A stream of forget requests (`unlearn stream`)."""

    methods: list[StreamMethod] = Field(
        default_factory=list, description="Methods to replay the stream with, one resident run each (the drift "
        "plot has a line per method); empty: the experiment's `method`.")
    source: Literal["file", "synthetic", "muse_sust", "muse_scal", "tofu_nested"] = Field(
        "synthetic", description="file: `requests` (JSONL); synthetic: generated; muse_sust: MUSE-News "
        "`sust` forget_1..4; muse_scal: MUSE-News `scal`'s nested forget_1 < .. < forget_4, each request what its "
        "split adds; tofu_nested: TOFU's forget01 < forget05 < forget10 as successive requests.")
    requests: str | None = Field(None, description="The JSONL file of requests (source: file).")
    synthetic: SyntheticRequests = Field(default_factory=SyntheticRequests)
    muse_path: str = Field("muse-bench/MUSE-News", description="HF id or local copy of MUSE-News.")
    follow: bool = Field(False, description="Keep reading `requests` as lines are appended.")
    idle_exit_s: float | None = Field(
        None, gt=0, description="With follow: stop after this long without a new line; null: run until stopped.")
    pace: Literal["asap", "realtime"] = Field(
        "asap", description="asap: a request is due as soon as it is read; realtime: at its `arrival` (seconds "
        "after the stream's start).")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    utility_floor: float = Field(
        0.5, ge=0, le=1, description="Guard: a request leaving model utility below this share of the original "
        "model's (or a NaN/infinite loss) is rolled back.")
    eval_max_per_split: int = Field(40, ge=1, description="Retain, neighbour and world examples evaluated after "
                                    "each request (forget sets: all of the batch's own, and the earlier ones that "
                                    "stream.resurgence names).")
    resurgence: ResurgenceSchedule = Field(default_factory=ResurgenceSchedule)
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Checkpoints kept (one per applied batch, under <method>/checkpoints/; the last "
        "applied one always); null: all (the audit trail points at them).")
    attack_every: int | None = Field(
        None, ge=1, description="Every this many applied requests, run the recovery attacks (the experiment's "
        "eval.attacks, else all of them at their defaults) on the current model and record the recovery of every "
        "forget set applied so far (ledger, stream_summary.json); null: never.")

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> "StreamConfig":
        if self.follow and self.source != "file":
            raise ValueError("stream.follow reads a file: set stream.source: file")
        if self.follow and len(self.methods) > 1:
            raise ValueError("stream.follow with several stream.methods: a followed stream never ends, so the "
                             "methods after the first would never run; list one")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"stream.methods lists a method twice ({names}): each gets its own folder by name")
        return self

    def check_runnable(self) -> None:
        """What only the command line can still complete (`--requests`): checked when the stream starts, not when
        the YAML loads, so that a config naming `source: file` may leave the file to the command line."""
        if self.source == "file" and not self.requests:
            raise ValueError("stream.source 'file' needs stream.requests (a JSONL file) or --requests")
