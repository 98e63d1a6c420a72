"""One method's stream: its ledger, its model on the resident worker group, and the loop between them.

The loop runs on the driver's main thread: a reader thread of its own reads the source (so that `--follow` never
blocks it); the loop validates and records every request, asks the policy what to dispatch, hands each batch to the
resident group as an `ApplyBatch` task (`orchestrator/stream/worker.py`) and records what comes back. A restarted
stream re-reads its source and skips the lines the ledger already holds, abandons the batch that was running when
it died and applies it again from the last applied checkpoint.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

from orchestrator.config import ExperimentConfig, MethodConfig
from orchestrator.errors import ConfigError
from orchestrator.observe.metrics import record_stream
from orchestrator.observe.progress import LiveTable, progress_mode
from orchestrator.run.job import early_stop_rows, method_rows, worker_settings
from orchestrator.run.prepare import Prepared, eval_settings
from orchestrator.run.resident import ResidentWorkers
from orchestrator.run.state import differences, training_identity
from orchestrator.stream.attacks import AttackPoint, attack_due, describe_point, stream_attacks
from orchestrator.stream.board import StreamBoard
from orchestrator.stream.config import StreamConfig, StreamMethod
from orchestrator.stream.ledger import LEDGER_FILE, Ledger
from orchestrator.stream.policy import Waiting, next_batch
from orchestrator.stream.requests import (BadLine, ContentHasher, ItemIndex, UnlearningRequest, parse_line,
                                          read_lines, synthetic_requests)
from orchestrator.stream.schedule import earlier_to_evaluate, last_measured
from orchestrator.stream.worker import ApplyBatch, BatchResult, ServeModel, StreamEvaluation
from orchestrator.worker.job import TrainJob
from orchestrator.observe.progress import Progress

CHECKPOINTS = "checkpoints"  # one folder per applied batch, under the method's folder
_END = object()


def method_config(config: ExperimentConfig, name: str, hparams: dict[str, Any]) -> ExperimentConfig:
    """`config` with another method: what a stream method or a request's override runs as."""
    return config.model_copy(update={"method": MethodConfig(name=name, hparams=dict(hparams))})


def resolved_method(method: StreamMethod, config: ExperimentConfig) -> dict[str, Any]:
    """name, hparams, lr, epochs: the request's or stream's settings, else train.lr/epochs, else the recipe (the
    run's own resolution, `ExperimentConfig.resolved_train`, for this method)."""
    train = method_config(config, method.name, method.hparams).resolved_train()
    return {"name": method.name, "hparams": dict(method.hparams), "lr": method.lr or train["lr"],
            "epochs": int(method.epochs or train["epochs"])}


def stream_identity(config: ExperimentConfig, cfg: StreamConfig, method: dict[str, Any]) -> dict[str, Any]:
    """What a method's stream applies: its training identity (as `unlearn run` checks it, `run/state.py`), its
    resolved method, where its requests come from, how they are batched and what the guard keeps. A stream resumed
    under another identity is refused."""
    identity = training_identity(method_config(config, method["name"], method["hparams"]))
    stream = cfg.model_dump(include={"source", "requests", "synthetic", "muse_path", "policy", "utility_floor",
                                     "eval_max_per_split"})
    return json.loads(json.dumps({**identity, "resolved_method": method, "stream": stream}, default=str))


class MethodStream:
    """One method's stream: its ledger, its model on the resident workers, and the loop between them."""

    def __init__(self, config: ExperimentConfig, cfg: StreamConfig, method: StreamMethod, prepared: Prepared,
                 tokenizer, folder: Path, workers: ResidentWorkers, progress: Progress, mode: str | None = None) -> None:
        """`mode`: the progress mode (default: `progress_mode()`); streams that run side by side share no live
        table."""
        self.config, self.cfg, self.prepared, self.tokenizer = config, cfg, prepared, tokenizer
        self.folder = folder
        self.workers = workers
        self.method = resolved_method(method, config)
        self.progress = lambda m: progress(f"[stream {method.name}] {m}")
        self.hasher = ContentHasher.of_folder(folder.parent)  # one key per stream folder, shared by its methods
        self.index = ItemIndex(prepared.data, self.hasher)
        self.examples: dict[int, list] = {}  # seq -> the request's examples (forget texts stay in memory only)
        self.board = StreamBoard(config.name, method.name)  # the live table, at a terminal
        self.mode = mode or progress_mode()
        self.deepspeed_json = None  # train.deepspeed's contents, read here: the workers may not see the file
        if config.train.deepspeed:
            from orchestrator.worker.deepspeed_engine import load_deepspeed_json

            self.deepspeed_json = load_deepspeed_json(config.train.deepspeed)

    # --- the source -----------------------------------------------------------------------------------------
    def _source(self, stop: threading.Event) -> Iterator[tuple[int, UnlearningRequest | BadLine]]:
        cfg = self.cfg
        if cfg.source == "file":
            for number, text in read_lines(cfg.requests, cfg.follow, cfg.idle_exit_s, stop):
                parsed = parse_line(text, number, self.hasher)
                if parsed is not None:
                    yield number, parsed
            return
        if cfg.source == "synthetic":
            listed = synthetic_requests(self.prepared.data, cfg.synthetic)
        elif cfg.source in ("muse_sust", "muse_scal"):
            from orchestrator.stream.sources import muse_scal_requests, muse_sust_requests

            listed = (muse_sust_requests if cfg.source == "muse_sust" else muse_scal_requests)(cfg.muse_path)
        else:
            from orchestrator.stream.sources import tofu_nested_requests

            listed = tofu_nested_requests(self.config.data.tofu_path)
        for request in listed:
            yield request.line, replace(request, content_hash=self.hasher(request.to_json()))

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
        self.read_upto = max(self.read_upto, seq)
        if seq <= self.last_seq_at_start:  # received before a restart: the ledger has it, if it is the same line
            recorded = ledger.line_hash(seq)
            if recorded is not None and recorded != parsed.content_hash:
                raise ConfigError(f"the stream's source changed: line {seq} is not the line the ledger received "
                                  "there (its keyed hash differs); restore the source, or start a new stream with "
                                  "another --output")
            return
        if isinstance(parsed, BadLine):
            ledger.quarantine(seq, parsed.id, parsed.reason, {"line": parsed.content_hash},
                              line_hash=parsed.content_hash)
            record_stream(self.config.name, self.method["name"], state="quarantined")
            self.board.record("quarantined")
            self.progress(f"line {seq} quarantined: {parsed.reason}")
            return
        hashes = {e.id: self.hasher.example(e) for e in examples}
        first = ledger.first_seq_of(parsed.id)
        if first is not None:
            reason = f"duplicate id {parsed.id!r} (first received at line {first})"
        elif unknown:
            # An unknown item may be a text pasted where an id belongs: it is named by its keyed hash, never echoed.
            keyed = [self.hasher(u) for u in unknown]
            hashes.update({f"unknown:{i}": h for i, h in enumerate(keyed)})
            shown = ", ".join(h[:12] for h in keyed[:5])
            reason = f"{len(unknown)} unknown item(s), keyed hashes {shown}{' ...' if len(unknown) > 5 else ''}"
        else:
            reason = None
        if reason is not None:
            ledger.quarantine(seq, parsed.id, reason, hashes, line_hash=parsed.content_hash)
            record_stream(self.config.name, self.method["name"], request=parsed.id, state="quarantined")
            self.board.record("quarantined")
            self.progress(f"{parsed.id} quarantined: {reason}")
            return
        method = resolved_method(parsed.method, self.config) if parsed.method is not None else None
        ledger.receive(seq, parsed.id, parsed.arrival, list(hashes), hashes, method, line_hash=parsed.content_hash)

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        ledger = Ledger(self.folder / LEDGER_FILE)
        try:
            identity = stream_identity(self.config, self.cfg, self.method)
            recorded = ledger.get_meta("identity")
            if recorded is not None and recorded != identity:
                raise ConfigError(f"{self.folder} holds a stream of another config (differing: "
                                  f"{', '.join(differences(recorded, identity))}); use another --output or remove "
                                  "the folder")
            abandoned = ledger.recover()
            if abandoned:
                self.progress(f"resuming: batch(es) {abandoned} were running when the stream stopped; their "
                              "requests are applied again from the last applied checkpoint")
            self.last_seq_at_start = ledger.last_seq()
            self.read_upto = 0  # the last source line read so far
            self.board.count_from(ledger)
            if ledger.get_meta("started_at") is None:
                ledger.set_metas({"started_at": time.time(), "method": self.method, "identity": identity})
            if not self.cfg.follow and self._complete(ledger):
                self.progress("every request of the source is already in the ledger: nothing to do")
                return
            self._serve(ledger)
            with LiveTable(self.board.table, self.mode):
                self._loop(ledger)
        finally:
            ledger.close()

    def _complete(self, ledger: Ledger) -> bool:
        seqs = [seq for seq, _ in self._source(threading.Event())]
        return bool(seqs) and max(seqs) <= ledger.last_seq() and not ledger.requests("received")

    def _serve(self, ledger: Ledger) -> None:
        """Load the latest model on the workers; on a first start, measure the original's utility there."""
        base = ledger.last_checkpoint() or self.prepared.target_dir
        if not Path(base).is_dir() and base != self.prepared.target_dir:
            raise ConfigError(f"the last applied checkpoint {base} is gone: the stream cannot resume")
        settings = worker_settings(self.config, self.workers.cpus_per_worker)
        self.evaluation = StreamEvaluation(
            tokenizer_dir=self.prepared.tokenizer_dir, data=self.prepared.data, template=self.prepared.template,
            settings=asdict(eval_settings(self.config.eval, self.config.data.max_length)),
            max_per_split=self.cfg.eval_max_per_split, utility_floor=self.cfg.utility_floor,
            attacks=stream_attacks(self.config, self.cfg))
        baseline = self.workers.run(ServeModel(
            key=str(self.folder), base_dir=base, dtype=self.config.model.dtype, use_gpu=settings.use_gpu,
            threads=settings.threads, evaluation=self.evaluation,
            measure_baseline=ledger.get_meta("baseline") is None))
        if baseline is not None:
            # Realtime arrivals count from the moment the model is first served (the original model evaluated), not
            # from the process start: a replayed stream asks how the service keeps up, not how long it took to boot.
            # One commit: a kill between the two would leave every request's due time infinite.
            ledger.set_metas({"baseline": baseline, "serving_since": time.time()})
            self.progress(f"original model: utility {baseline['model_utility']:.4f}")

    def _loop(self, ledger: Ledger) -> None:
        stop = threading.Event()
        incoming: queue.Queue = queue.Queue()
        reader = threading.Thread(target=self._read, args=(incoming, stop), daemon=True)
        reader.start()
        source_done = False
        started_wall = ledger.get_meta("serving_since")
        due: dict[int, float] = {}  # seq -> wall time it became due
        in_flight: dict[str, Any] | None = None
        for row in ledger.requests("received"):  # left from before a restart, in order
            due[row.seq] = self._due_time(row.arrival, row.received_at, started_wall)
        try:
            while True:
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
                if in_flight is not None:
                    done, result = self.workers.result(in_flight["call"], timeout=0.05)
                    if done:
                        self._record(ledger, in_flight, result)
                        in_flight = None
                    continue
                if self.read_upto < self.last_seq_at_start:  # a restart: the lines the ledger holds come first
                    if source_done:
                        raise ConfigError(f"the stream's source changed: it ends at line {self.read_upto}, and the "
                                          f"ledger received lines up to {self.last_seq_at_start}; restore the "
                                          "source, or start a new stream with another --output")
                    time.sleep(0.05)
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
                    in_flight = self._dispatch(ledger, batch)
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

    def _dispatch(self, ledger: Ledger, batch: list[Waiting]) -> dict[str, Any]:
        method = batch[0].payload
        last = max(w.seq for w in batch)
        applied = [r for r in ledger.requests("applied")]
        named = [r for r in ledger.requests() if r.state != "quarantined" and r.seq <= last]
        excluded = sorted({item for r in named for item in r.items})
        applied_batches = [b for b in ledger.batches() if b["state"] == "applied"]
        number = ledger.start_batch([w.seq for w in batch], method, ledger.last_checkpoint())
        attack = attack_due(len(applied), len(batch), self.cfg.attack_every)
        earlier = earlier_to_evaluate([r.seq for r in applied], last_measured(applied_batches), len(applied_batches),
                                      self.cfg.resurgence, everything=attack)
        task = ApplyBatch(
            key=str(self.folder), batch=number, request_ids=[w.request_id for w in batch],
            job=self._job(method, [e for w in batch for e in self.examples[w.seq]], set(excluded)),
            current=[(w.seq, self.examples[w.seq]) for w in batch],
            earlier=[(seq, self.examples[seq]) for seq in earlier], excluded_ids=excluded,
            baseline_utility=(ledger.get_meta("baseline") or {}).get("model_utility") or 0.0,
            checkpoint_dir=str(self.folder / CHECKPOINTS / f"batch-{number:05d}"), attack=attack,
            earlier_before={r.seq: (r.metrics or {}).get("before") for r in applied} if attack else {})
        dispatched = time.time()
        call = self.workers.submit(task)
        self.board.queued, self.board.running = len(ledger.requests("received")), len(batch)
        return {"batch": number, "call": call, "waiting": batch, "dispatched_at": dispatched,
                "applied": [r.seq for r in applied]}

    def _job(self, method: dict[str, Any], forget: list, excluded: set[str]) -> TrainJob:
        """The batch's `TrainJob`, built as `unlearn run` builds its own (`orchestrator/run/job.py`): its rows (the
        examples named by any request so far are not retained any more) and its settings (the method's lr and
        epochs; one try, no checkpoints of its own). `train.early_stop`, when the config asks for it (a recipe's
        default does not turn it on in a stream), stops each request on its own retain sample's perplexity."""
        config = method_config(self.config, method["name"], method["hparams"])
        template, max_length = self.prepared.template, self.config.data.max_length
        retain = tuple(e for e in self.prepared.data.retain if e.id not in excluded)
        rows = method_rows(self.tokenizer, method["name"], method["hparams"], forget, retain, template, max_length)
        asked = self.config.train.early_stop not in (None, False) and bool(retain)
        settings = replace(worker_settings(config, self.workers.cpus_per_worker, lr=method["lr"],
                                           epochs=method["epochs"], early_stop=asked),
                           max_failures=0, checkpoint_every_epochs=None)
        # progress "off": the stream shows one line (and a live table) per request, not the request's epochs.
        return TrainJob(target_dir=self.prepared.target_dir, method_name=method["name"],
                        method_hparams=dict(method["hparams"]), train=settings, rows=rows,
                        pad_token_id=self.tokenizer.pad_token_id, dtype=self.config.model.dtype, progress="off",
                        early_stop_rows=early_stop_rows(self.tokenizer, settings, retain, template, max_length),
                        deepspeed_json=self.deepspeed_json)

    def _record(self, ledger: Ledger, in_flight: dict[str, Any], result: BatchResult) -> None:
        assert result.batch == in_flight["batch"], (result.batch, in_flight["batch"])
        finished = time.time()
        service = finished - in_flight["dispatched_at"]
        baseline = ledger.get_meta("baseline") or {}
        utility = result.utility.get("model_utility") if result.utility else None
        drift = None if utility is None or baseline.get("model_utility") is None else (
            utility - baseline["model_utility"])
        per_request = {}
        for w in in_flight["waiting"]:
            per_request[w.seq] = {
                "before": result.before.get(w.seq), "after": result.after.get(w.seq),
                "model_utility": utility, "drift": drift, "queue_s": round(in_flight["dispatched_at"] - w.due, 4),
                "service_s": round(service, 4), "latency_s": round(finished - w.due, 4)}
        inside = sum(result.timings.get(k, 0.0) for k in ("build", "train", "before_eval", "evaluate", "attacks"))
        timings = {**result.timings, "service": round(service, 4), "outside": round(service - inside, 4)}
        batch_metrics = {"after": {str(k): v for k, v in result.after.items()}, "utility": result.utility,
                         "drift": drift, "train": result.train}
        seqs = [*in_flight["applied"], *(w.seq for w in in_flight["waiting"])]  # applied so far, this batch too
        point = None if result.attacks is None else AttackPoint(result.batch, len(seqs), result.attacks)
        ledger.finish_batch(result.batch, result.state, result.checkpoint, per_request, batch_metrics,
                            timings, result.reason, attacked=None if point is None else (point, sorted(seqs)))
        if point is not None and (self.mode != "off" or point.outcome.error):
            self.progress(describe_point(point))
        self._prune_checkpoints(ledger)
        # The Ray dashboard's view (orchestrator/observe/metrics.py): ids, states and numbers, never a forget text.
        waiting_now = len(ledger.requests("received"))
        for w in in_flight["waiting"]:
            record_stream(self.config.name, self.method["name"], request=w.request_id, state=result.state,
                          latency_s=per_request[w.seq]["latency_s"], drift=drift, queue_depth=waiting_now)
            self.board.record(result.state, per_request[w.seq]["latency_s"], drift)
        self.board.queued, self.board.running = waiting_now, 0
        if self.mode == "off" and result.state == "applied":
            return  # off: only the requests that went wrong get their line
        ids = ", ".join(w.request_id for w in in_flight["waiting"])
        forget = [result.after.get(w.seq) for w in in_flight["waiting"]]
        shown = "" if not forget or forget[0] is None else (
            f"forget ROUGE-L {forget[0]['rouge_l']:.3f}, utility {utility:.4f} (drift {drift:+.4f}), ")
        self.progress(f"{ids}: {result.state} (batch {result.batch}, {shown}{service:.1f} s)"
                      + (f": {result.reason}" if result.reason else ""))

    def _prune_checkpoints(self, ledger: Ledger) -> None:
        """Keep the `stream.keep_checkpoints` newest applied checkpoints (all when unset); never the last one, which
        the stream resumes from."""
        keep = self.cfg.keep_checkpoints
        if not keep:
            return
        applied = [b["checkpoint"] for b in ledger.batches() if b["state"] == "applied" and b["checkpoint"]]
        for folder in applied[:-max(keep, 1)]:
            shutil.rmtree(folder, ignore_errors=True)
