"""`run_stream(config)`: replay a stream of forget requests on one resident model per method, exactly once each.

Per method (`stream.methods`, else the experiment's method) the stream has its own folder `<output>/<method>/`
with its ledger (`ledger.py`) and its Ray Train state (`ray/stream/`, one checkpoint per applied batch). The
driver starts one long-lived `TorchTrainer` whose workers run `worker.stream_loop_per_worker`; `trainer.fit()`
holds the main thread (Ray Train installs a SIGINT handler, which only the main thread may), while a second
thread runs the stream: it reads the source (a reader thread of its own, so that `--follow` never blocks it),
validates and records every request, asks the policy what to dispatch, sends batches down the feed queue and
records what comes back. A restarted stream re-reads its source and skips the lines the ledger already holds,
abandons the batch that was running when it died and applies it again from the last applied checkpoint.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.observe.metrics import record_stream
from orchestrator.observe.progress import LiveTable, progress_mode
from orchestrator.stream.board import StreamBoard
from orchestrator.stream.config import StreamConfig, StreamMethod
from orchestrator.stream.ledger import LEDGER_FILE, Ledger
from orchestrator.stream.policy import Waiting, next_batch
from orchestrator.stream.requests import (BadLine, ItemIndex, UnlearningRequest, example_hash, parse_line,
                                          read_lines, synthetic_requests)

Progress = Callable[[str], None]
RUN_NAME = "stream"
_END = object()


@dataclass
class StreamResult:
    output_dir: str
    methods: list[str]
    summary_path: str
    report_path: str
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def stream_config(config: ExperimentConfig, requests: str | None = None, follow: bool | None = None) -> StreamConfig:
    """The config's `stream:` section (defaults when absent) with the CLI's `--requests` / `--follow` applied."""
    if config.train.early_stop:
        # A stream's requests end on their epochs, and its guard (stream.utility_floor) rolls back a request that
        # cost too much utility; the per-run stopping rule does not apply to them.
        raise ConfigError("train.early_stop applies to `unlearn run` and sweeps, not to a stream (its guard is "
                          "stream.utility_floor); remove it from this config")
    base = (config.stream or StreamConfig()).model_dump()
    if requests is not None:
        base.update(source="file", requests=requests)
    if follow is not None:
        base["follow"] = follow
    try:
        cfg = StreamConfig(**base)
        cfg.check_runnable()
        return cfg
    except ValueError as err:
        raise ConfigError(f"stream: {str(err).splitlines()[-1].strip()}") from None


def stream_output_dir(config: ExperimentConfig) -> Path:
    return Path(config.output_dir or f"runs/{config.name}-stream")


def resolved_method(method: StreamMethod, config: ExperimentConfig) -> dict[str, Any]:
    """name, hparams, lr, epochs: the request's or stream's settings, else train.lr/epochs, else the recipe."""
    from orchestrator.recipes import recipe

    defaults = recipe(method.name, tiny=config.model.name == "tiny")
    return {"name": method.name, "hparams": dict(method.hparams),
            "lr": method.lr or config.train.lr or defaults["lr"],
            "epochs": int(method.epochs or config.train.epochs or defaults["epochs"])}


def run_stream(config: ExperimentConfig, *, requests: str | None = None, follow: bool | None = None,
               progress: Progress = print) -> StreamResult:
    started = time.perf_counter()
    cfg = stream_config(config, requests, follow)
    if config.train.deepspeed:
        raise ConfigError("unlearn stream keeps one model resident across requests and rebuilds its optimizer per "
                          "request, which a DeepSpeed engine does not allow; remove train.deepspeed")
    if cfg.source == "file" and not Path(cfg.requests or "").is_file():
        raise ConfigError(f"stream.requests: no such file {cfg.requests!r}")
    stream_methods = cfg.methods or [StreamMethod(name=config.method.name, hparams=dict(config.method.hparams))]
    output = stream_output_dir(config).resolve()
    output.mkdir(parents=True, exist_ok=True)

    from orchestrator.run.prepare import load_tokenizer, prepare
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.unlearning import check_resources

    connect_ray(config.ray.address, config.ray.num_cpus, progress)
    check_resources(config)
    prepared = prepare(config, progress=progress)
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    for method in stream_methods:
        MethodStream(config, cfg, method, prepared, tokenizer, output / method.name, progress).run()

    from orchestrator.stream.report import write_stream_report

    summary = write_stream_report(output, [m.name for m in stream_methods], cfg)
    return StreamResult(str(output), [m.name for m in stream_methods], str(output / "stream_summary.json"),
                        str(output / "stream_report.md"), round(time.perf_counter() - started, 2), summary)


class MethodStream:
    """One method's stream: its ledger, its resident Ray Train run, and the loop between them."""

    def __init__(self, config: ExperimentConfig, cfg: StreamConfig, method: StreamMethod, prepared, tokenizer,
                 folder: Path, progress: Progress) -> None:
        self.config, self.cfg, self.prepared, self.tokenizer = config, cfg, prepared, tokenizer
        self.folder = folder
        self.method = resolved_method(method, config)
        self.progress = lambda m: progress(f"[stream {method.name}] {m}")
        self.index = ItemIndex(prepared.data)
        self.examples: dict[int, list] = {}  # seq -> the request's examples (forget texts stay in memory only)
        self.error: BaseException | None = None
        self.fit_done = threading.Event()
        self.board = StreamBoard(config.name, method.name)  # the live table, at a terminal
        self.mode = progress_mode()

    # --- the source -----------------------------------------------------------------------------------------
    def _source(self, stop: threading.Event) -> Iterator[tuple[int, UnlearningRequest | BadLine]]:
        cfg = self.cfg
        if cfg.source == "file":
            for number, text in read_lines(cfg.requests, cfg.follow, cfg.idle_exit_s, stop):
                parsed = parse_line(text, number)
                if parsed is not None:
                    yield number, parsed
            return
        if cfg.source == "synthetic":
            listed = synthetic_requests(self.prepared.data, cfg.synthetic)
        elif cfg.source == "muse_sust":
            from orchestrator.stream.sources import muse_sust_requests

            listed = muse_sust_requests(cfg.muse_path)
        else:
            from orchestrator.stream.sources import tofu_nested_requests

            listed = tofu_nested_requests(self.config.data.tofu_path)
        for request in listed:
            yield request.line, request

    def _read(self, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in self._source(stop):
                out.put(item)
        except BaseException as err:  # surfaced by the loop
            out.put(err)
        out.put(_END)

    # --- receipt ----------------------------------------------------------------------------------------------
    def _receive(self, ledger: Ledger, seq: int, parsed: UnlearningRequest | BadLine) -> None:
        if isinstance(parsed, UnlearningRequest):
            examples, unknown = self.index.resolve(parsed)
            self.examples[seq] = examples
        if seq <= self.last_seq_at_start:
            return  # received before a restart: the ledger has it
        if isinstance(parsed, BadLine):
            ledger.quarantine(seq, parsed.id, parsed.reason, {"line": parsed.content_hash})
            record_stream(self.config.name, self.method["name"], state="quarantined")
            self.board.record("quarantined")
            self.progress(f"line {seq} quarantined: {parsed.reason}")
            return
        hashes = {e.id: example_hash(e) for e in examples}
        first = ledger.first_seq_of(parsed.id)
        if first is not None:
            reason = f"duplicate id {parsed.id!r} (first received at line {first})"
        elif unknown:
            shown = ", ".join(repr(u[:64]) for u in unknown[:5])
            reason = f"{len(unknown)} unknown item id(s): {shown}{' ...' if len(unknown) > 5 else ''}"
        else:
            reason = None
        if reason is not None:
            ledger.quarantine(seq, parsed.id, reason, hashes)
            record_stream(self.config.name, self.method["name"], request=parsed.id, state="quarantined")
            self.board.record("quarantined")
            self.progress(f"{parsed.id} quarantined: {reason}")
            return
        method = resolved_method(parsed.method, self.config) if parsed.method is not None else None
        ledger.receive(seq, parsed.id, parsed.arrival, list(hashes), hashes, method)

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        from orchestrator.run.unlearning import RunError, _last_line

        ledger = Ledger(self.folder / LEDGER_FILE)
        try:
            abandoned = ledger.recover()
            if abandoned:
                self.progress(f"resuming: batch(es) {abandoned} were running when the stream stopped; their "
                              "requests are applied again from the last applied checkpoint")
            self.last_seq_at_start = ledger.last_seq()
            self.board.count_from(ledger)
            if ledger.get_meta("started_at") is None:
                ledger.set_meta("started_at", time.time())
                ledger.set_meta("method", self.method)
            if not self.cfg.follow and self._complete(ledger):
                self.progress("every request of the source is already in the ledger: nothing to do")
                return
            import ray.util.queue

            options = {"num_cpus": 0}  # the workers hold the stream's CPUs
            feed = ray.util.queue.Queue(actor_options=options)
            results = ray.util.queue.Queue(actor_options=options)
            job = self._job(ledger, feed, results)
            loop = threading.Thread(target=self._loop_safely, args=(ledger, feed, results), daemon=True)
            trainer = self._trainer(job)
            loop.start()
            try:
                with LiveTable(self.board.table, self.mode):
                    trainer.fit()
            except Exception as err:
                self.fit_done.set()
                loop.join(timeout=30)
                raise RunError(f"stream failed: {_last_line(err)} (worker logs: {self.folder / 'ray'})") from err
            self.fit_done.set()
            loop.join()
            if self.error is not None:
                raise self.error
        finally:
            ledger.close()

    def _complete(self, ledger: Ledger) -> bool:
        seqs = [seq for seq, _ in self._source(threading.Event())]
        return bool(seqs) and max(seqs) <= ledger.last_seq() and not ledger.requests("received")

    def _job(self, ledger: Ledger, feed, results):
        from dataclasses import asdict

        from orchestrator.run.prepare import eval_settings
        from orchestrator.run.unlearning import _default_cpus_per_worker
        from orchestrator.stream.worker import StreamJob

        train = self.config.resolved_train()
        if train["cpus_per_worker"] is None:
            train["cpus_per_worker"] = _default_cpus_per_worker(self.config)
        train["threads"] = train["cpus_per_worker"]
        self.train = train
        baseline = ledger.get_meta("baseline")
        base = ledger.last_checkpoint() or self.prepared.target_dir
        if not Path(base).is_dir() and base != self.prepared.target_dir:
            raise ConfigError(f"the last applied checkpoint {base} is gone: the stream cannot resume")
        return StreamJob(base_dir=base, tokenizer_dir=self.prepared.tokenizer_dir, train=train,
                         data=self.prepared.data, template=self.prepared.template,
                         eval_settings=asdict(eval_settings(self.config.eval, self.config.data.max_length)),
                         eval_max_per_split=self.cfg.eval_max_per_split, utility_floor=self.cfg.utility_floor,
                         baseline_utility=None if baseline is None else baseline["model_utility"],
                         pad_token_id=self.tokenizer.pad_token_id, feed=feed, results=results,
                         dtype=self.config.model.dtype, max_length=self.config.data.max_length)

    def _trainer(self, job):
        from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from orchestrator.run.feed import worker_env
        from orchestrator.stream.worker import stream_loop_per_worker

        env = worker_env(self.config.train.use_gpu)
        return TorchTrainer(
            stream_loop_per_worker, train_loop_config={"job": job},
            scaling_config=ScalingConfig(num_workers=self.config.train.workers, use_gpu=self.config.train.use_gpu,
                                         resources_per_worker={"CPU": self.train["cpus_per_worker"]}),
            run_config=RunConfig(name=RUN_NAME, storage_path=str(self.folder / "ray"),
                                 failure_config=FailureConfig(max_failures=0),
                                 checkpoint_config=CheckpointConfig(num_to_keep=self.cfg.keep_checkpoints),
                                 worker_runtime_env={"env_vars": env}, logging_config=LoggingConfig(log_level="WARNING")))

    def _loop_safely(self, ledger: Ledger, feed, results) -> None:
        try:
            self._loop(ledger, feed, results)
        except BaseException as err:
            self.error = err
        finally:
            try:
                feed.put({"kind": "stop"})
            except Exception:  # the run (and its queue) is already gone
                pass

    def _loop(self, ledger: Ledger, feed, results) -> None:
        from ray.util.queue import Empty

        stop = threading.Event()
        incoming: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read, args=(incoming, stop), daemon=True)
        reader.start()
        source_done = False
        # Realtime arrivals count from the moment the model is first served (the original model evaluated), not
        # from the process start: a replayed stream asks how the service keeps up, not how long it took to boot.
        started_wall = ledger.get_meta("serving_since")
        due: dict[int, float] = {}  # seq -> wall time it became due
        in_flight: dict[str, Any] | None = None
        baseline_known = ledger.get_meta("baseline") is not None
        for row in ledger.requests("received"):  # left from before a restart, in order
            due[row.seq] = self._due_time(row.arrival, row.received_at, started_wall)
        try:
            while True:
                if self.fit_done.is_set():
                    raise RuntimeError("the Ray Train run ended while the stream was still running")
                while not source_done:
                    try:
                        item = incoming.get_nowait()
                    except queue.Empty:
                        break
                    if item is _END:
                        source_done = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        seq, parsed = item
                        self._receive(ledger, seq, parsed)
                        received = ledger.requests("received")
                        self.board.queued = len(received)
                        for row in received:
                            due.setdefault(row.seq, self._due_time(row.arrival, row.received_at, started_wall))
                if in_flight is not None or not baseline_known:
                    try:
                        message = results.get(block=True, timeout=0.05)
                    except Empty:
                        message = None
                    if message is not None and message["kind"] == "baseline":
                        ledger.set_meta("baseline", message["utility"])
                        baseline_known = True
                        if started_wall is None:
                            started_wall = time.time()
                            ledger.set_meta("serving_since", started_wall)
                            due = {row.seq: self._due_time(row.arrival, row.received_at, started_wall)
                                   for row in ledger.requests("received")}
                        self.progress(f"original model: utility {message['utility']['model_utility']:.4f}")
                    elif message is not None:
                        self._record(ledger, in_flight, message)
                        in_flight = None
                    continue
                waiting = self._waiting(ledger, due)
                now = time.time()
                ready = [w for w in waiting if w.due <= now]
                # Requests are applied in order: only the due prefix of the waiting list may go.
                prefix = []
                for w in waiting:
                    if w.due > now:
                        break
                    prefix.append(w)
                batch, wait = next_batch(prefix, self.cfg.policy, now, more_may_come=not source_done)
                if batch:
                    in_flight = self._dispatch(ledger, feed, batch)
                    continue
                if source_done and not waiting:
                    return
                time.sleep(min(wait or 0.05, 0.05) if ready or not waiting else 0.05)
        finally:
            stop.set()

    def _due_time(self, arrival: float | None, received_at: float | None, started_wall: float | None) -> float:
        if self.cfg.pace == "realtime":  # not yet served: nothing is due (the dues are set when it is)
            return float("inf") if started_wall is None else started_wall + (arrival or 0.0)
        return received_at or time.time()

    def _waiting(self, ledger: Ledger, due: dict[int, float]) -> list[Waiting]:
        out = []
        for row in ledger.requests("received"):
            method = row.method or self.method
            out.append(Waiting(row.seq, row.request_id, due.get(row.seq, time.time()),
                               json.dumps(method, sort_keys=True), payload=method))
        return out

    def _dispatch(self, ledger: Ledger, feed, batch: list[Waiting]) -> dict[str, Any]:
        method = batch[0].payload
        last = max(w.seq for w in batch)
        applied = [r for r in ledger.requests("applied")]
        named = [r for r in ledger.requests() if r.state != "quarantined" and r.seq <= last]
        excluded = sorted({item for r in named for item in r.items})
        number = ledger.start_batch([w.seq for w in batch], method, ledger.last_checkpoint())
        message = {"kind": "batch", "batch": number, "method": method,
                   "requests": [{"seq": w.seq, "id": w.request_id, "examples": self.examples[w.seq]} for w in batch],
                   "earlier": [{"seq": r.seq, "id": r.request_id, "examples": self.examples[r.seq]}
                               for r in applied],
                   "excluded_ids": excluded}
        dispatched = time.time()
        feed.put(message)
        self.board.queued, self.board.running = len(ledger.requests("received")), len(batch)
        return {"batch": number, "waiting": batch, "dispatched_at": dispatched}

    def _record(self, ledger: Ledger, in_flight: dict[str, Any], result: dict[str, Any]) -> None:
        assert result["batch"] == in_flight["batch"], (result["batch"], in_flight["batch"])
        finished = time.time()
        service = finished - in_flight["dispatched_at"]
        baseline = ledger.get_meta("baseline") or {}
        utility = result["utility"].get("model_utility") if result["utility"] else None
        drift = None if utility is None or baseline.get("model_utility") is None else (
            utility - baseline["model_utility"])
        per_request = {}
        for w in in_flight["waiting"]:
            per_request[w.seq] = {
                "before": result["before"].get(w.seq), "after": result["after"].get(w.seq),
                "model_utility": utility, "drift": drift, "queue_s": round(in_flight["dispatched_at"] - w.due, 4),
                "service_s": round(service, 4), "latency_s": round(finished - w.due, 4)}
        timings = {**result["timings"], "service": round(service, 4),
                   "outside": round(service - result["timings"]["build"] - result["timings"]["train"]
                                    - result["timings"]["before_eval"] - result["timings"]["evaluate"], 4)}
        batch_metrics = {"after": {str(k): v for k, v in result["after"].items()}, "utility": result["utility"],
                         "drift": drift, "train": result["train"]}
        ledger.finish_batch(result["batch"], result["state"], result["checkpoint"], per_request, batch_metrics,
                            timings, result["reason"])
        # The Ray dashboard's view (orchestrator/observe/metrics.py): ids, states and numbers, never a forget text.
        waiting_now = len(ledger.requests("received"))
        for w in in_flight["waiting"]:
            record_stream(self.config.name, self.method["name"], request=w.request_id, state=result["state"],
                          latency_s=per_request[w.seq]["latency_s"], drift=drift, queue_depth=waiting_now)
            self.board.record(result["state"], per_request[w.seq]["latency_s"], drift)
        self.board.queued, self.board.running = waiting_now, 0
        if self.mode == "off" and result["state"] == "applied":
            return  # off: only the requests that went wrong get their line
        ids = ", ".join(w.request_id for w in in_flight["waiting"])
        forget = [result["after"].get(w.seq) for w in in_flight["waiting"]]
        shown = "" if not forget or forget[0] is None else (
            f"forget ROUGE-L {forget[0]['rouge_l']:.3f}, utility {utility:.4f} (drift {drift:+.4f}), ")
        self.progress(f"{ids}: {result['state']} (batch {result['batch']}, {shown}{service:.1f} s)"
                      + (f": {result['reason']}" if result["reason"] else ""))
