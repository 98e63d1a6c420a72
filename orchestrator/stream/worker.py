"""A request stream's work on a resident worker group: keep the latest model, apply a batch of requests to it.

The stream runs on the same resident group as `unlearn run` and sweep slots (`orchestrator/run/resident.py`), with
two tasks of its own. `ServeModel` loads the model the stream continues from into the group's slot (and measures
the original model's utility, the guard's yardstick, when the ledger does not have it yet). `ApplyBatch` unlearns one
batch of requests with the same worker code as `unlearn run` (`UnlearningWorker.build` over the resident model,
`train`, `trained_model`), with the model before the batch as NPO's/UnDIAL's reference. Then rank
0 evaluates (the batch's forget sets, the earlier ones `stream.resurgence` names (`orchestrator/stream/schedule.py`),
utility: `orchestrator/evaluation/forget_sets.py`),
the guard decides, and either rank 0 writes the new model as the batch's checkpoint or every rank restores the
model from a CPU copy taken before the batch. At an attack point (`stream.attack_every`, `ApplyBatch.attack`), rank 0
then attacks the applied model on every forget set so far (`orchestrator/stream/attacks.py`).

Under `train.deepspeed` the first request builds the DeepSpeed engine over the served model and the worker keeps it:
each later request restarts it (`DeepSpeedStepEngine.restart`: no optimizer state, a new schedule) rather than
laying ZeRO's partitions and hooks over the module again. Rank 0 sees the model whole to evaluate it and keeps the
copy a rollback scatters back (`orchestrator/stream/weights.py`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.attacks.config import AttacksConfig
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.run.feed import Forward, WorkerSlot
from orchestrator.stream.attacks import AttackOutcome, attack_requests
from orchestrator.stream.weights import RollbackCopy, whole_on_rank_zero
from orchestrator.worker.checkpoint import written_in_place
from orchestrator.worker.entry import prepare_worker_process
from orchestrator.worker.job import TrainJob
from orchestrator.worker.loop import UnlearningWorker
from orchestrator.worker.ranks import from_rank_zero, worker_context
from orchestrator.worker.reports import report

if TYPE_CHECKING:
    from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine

STATE_FILE = "stream_state.json"

Groups = list[tuple[int, list[Example]]]  # (request seq, its forget examples)


@dataclass
class ServedModel:
    """What a worker keeps of a stream between its batches."""

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    evaluation: "StreamEvaluation"
    engine: "DeepSpeedStepEngine | None" = None  # under train.deepspeed: built by the first request, then kept
    engine_method: str | None = None  # the method (name, hparams) the engine's optimizer was built for


@dataclass(frozen=True)
class StreamEvaluation:
    """How every batch of a stream is evaluated, and how much utility it may cost."""

    tokenizer_dir: str
    data: UnlearningData  # retain / neighbour / world for utility
    template: PromptTemplate
    settings: dict[str, Any]  # EvalSettings, asdict
    max_per_split: int
    utility_floor: float
    attacks: AttacksConfig | None = None  # resolved (`stream_attacks`): what an attack point runs


@dataclass(frozen=True)
class ServeModel:
    """Load `base_dir` (the stream's latest model) into the slot under `key`; rank 0 returns the original model's
    utility when `measure_baseline` (the first start of a stream), else None."""

    key: str
    base_dir: str
    dtype: str
    use_gpu: bool
    threads: int | None
    evaluation: StreamEvaluation
    measure_baseline: bool

    def run(self, slot: WorkerSlot, forward: Forward | None) -> dict[str, Any] | None:
        from orchestrator.evaluation.forget_sets import utility_data, utility_metrics
        from orchestrator.models.loading import load_causal_lm, load_tokenizer

        prepare_worker_process(self.threads)
        rank, _, device = worker_context(self.use_gpu)
        for previous in slot.kept.values():  # one stream at a time: the previous one's model goes
            if previous.engine is not None:
                previous.engine.close()
        slot.kept.clear()
        model = load_causal_lm(self.base_dir, dtype=getattr(torch, self.dtype)).to(device)
        served = ServedModel(model, load_tokenizer(self.evaluation.tokenizer_dir), device, self.evaluation)
        slot.kept[self.key] = served
        if rank != 0 or not self.measure_baseline:
            return None
        ev = self.evaluation
        return utility_metrics(model, served.tokenizer, utility_data(ev.data, set(), ev.max_per_split), ev.template,
                               _settings(ev))


@dataclass
class BatchResult:
    """Rank 0's account of one batch: what the guard decided, and what was measured before and after."""

    batch: int
    state: str  # applied | rolled_back | failed
    reason: str | None
    checkpoint: str | None
    before: dict[int, dict[str, float]]  # seq -> the request's forget metrics before the batch
    after: dict[int, dict[str, float]]  # seq -> forget metrics after it, for this batch's and every earlier request
    utility: dict[str, Any]
    train: dict[str, Any]  # steps, last losses
    timings: dict[str, float] = field(default_factory=dict)
    attacks: AttackOutcome | None = None  # an attack point's recovery per request seq (current and earlier)


@dataclass(frozen=True)
class ApplyBatch:
    """Unlearn one batch of requests from the served model (`job` holds its rows and settings) and evaluate it."""

    key: str
    batch: int
    request_ids: list[str]
    job: TrainJob
    current: Groups
    earlier: Groups
    excluded_ids: list[str]  # examples named by any request so far: not counted as utility
    baseline_utility: float
    checkpoint_dir: str  # where rank 0 writes the new model if the batch is applied
    attack: bool = False  # an attack point: attack the model once the batch is applied (rank 0)
    earlier_before: dict[int, dict[str, float] | None] = field(default_factory=dict)  # seq -> before its batch

    def run(self, slot: WorkerSlot, forward: Forward | None) -> BatchResult | None:
        from orchestrator.evaluation.forget_sets import forget_metrics, utility_data, utility_metrics

        served: ServedModel = slot.kept[self.key]
        ev, tokenizer, job = served.evaluation, served.tokenizer, self.job
        settings = _settings(ev)
        prepare_worker_process(job.train.threads, bool(job.train.deepspeed))
        rank, world_size, device = worker_context(job.train.use_gpu)
        t0 = time.perf_counter()
        copy = RollbackCopy.take(served.model, served.engine, rank)
        whole = whole_on_rank_zero(served.model, served.engine, copy, job.target_dir, job.dtype, device, rank)
        before = forget_metrics(whole, tokenizer, self.current, ev.template, settings) if rank == 0 else {}
        del whole
        t1 = time.perf_counter()

        torch.manual_seed(job.train.seed)
        # The model before the batch is NPO's/UnDIAL's reference: what they read of it is computed in `build`,
        # before the first step, so no second copy is held (a method that keeps its reference gets a copy there).
        worker = UnlearningWorker(job, report_progress=False)  # one report per batch, below
        error = None
        model = served.model
        method = json.dumps([job.method_name, job.method_hparams], sort_keys=True)
        try:
            if served.engine is not None and served.engine_method != method:
                raise RuntimeError(f"the stream's DeepSpeed engine was built for {served.engine_method}; a request "
                                   f"cannot switch it to {method}")
            worker.build(served.model, engine=served.engine)
            if worker.ds_config is not None:
                served.engine, served.engine_method = worker.engine, method  # kept: ZeRO's hooks are laid once
            t2 = time.perf_counter()
            worker.train()
            model = worker.trained_model()  # LoRA / FILA adapters merged back; whole on rank 0 under DeepSpeed
        except Exception as err:  # a method that cannot run on this request: roll back and go on
            error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            model = getattr(worker, "model", served.model)
            if served.engine is None and hasattr(model, "unload"):
                model = model.unload()  # LoRA adapters laid before the error: taken off, the base weights restored
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        losses = [h["loss"] for h in worker.history if "loss" in h]
        finite = error is None and all(math.isfinite(x) for x in losses) and all(
            bool(torch.isfinite(p).all()) for p in model.parameters())

        after: dict[int, dict[str, float]] = {}
        utility: dict[str, Any] = {}
        state, reason = "applied", None
        if rank == 0:
            if error is not None:
                state, reason = "failed", f"unlearning raised {error}"
            elif not finite:
                state, reason = "rolled_back", "non-finite loss or weights"
            else:
                after = forget_metrics(model, tokenizer, self.current + self.earlier, ev.template, settings)
                utility = utility_metrics(model, tokenizer,
                                          utility_data(ev.data, set(self.excluded_ids), ev.max_per_split),
                                          ev.template, settings)
                floor = ev.utility_floor * self.baseline_utility
                value = utility.get("model_utility")
                if value is None or not math.isfinite(value) or value < floor:
                    shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
                    state, reason = "rolled_back", f"model utility {shown} below the floor {floor:.4f}"
        t4 = time.perf_counter()
        state, reason = from_rank_zero((state, reason), world_size)

        checkpoint = None
        if state == "applied":
            if rank == 0:
                checkpoint = self._write_checkpoint(model)
        else:  # into the model the request trained: the engine's module under DeepSpeed
            copy.restore(served.model if served.engine is not None else model, served.engine, rank)
        if served.engine is None:
            served.model = model  # under DeepSpeed the served model is the engine's module, rank 0's copy goes
        del copy
        report({"batch": self.batch, "applied": float(state == "applied"),
                "model_utility": utility.get("model_utility") if utility else None, "run": self.key,
                "method": job.method_name})
        t5 = time.perf_counter()
        if rank != 0:
            return None
        attacked = self._attack(model, served, before, after) if state == "applied" and self.attack else None
        t6 = time.perf_counter()
        timings = {"before_eval": t1 - t0, "build": t2 - t1, "train": t3 - t2, "evaluate": t4 - t3,
                   "checkpoint": t5 - t4, **({"attacks": t6 - t5} if attacked is not None else {}),
                   "worker_total": t6 - t0}
        return BatchResult(self.batch, state, reason, checkpoint, before, after, utility,
                           {"steps": worker.global_step, "losses": losses[-3:], "epochs_run": worker.epoch,
                            "early_stop": worker.stopper.summary() if worker.stopper is not None else None},
                           {k: round(v, 4) for k, v in timings.items()}, attacked)

    def _attack(self, model: torch.nn.Module, served: ServedModel, before: dict[int, dict[str, float]],
                after: dict[int, dict[str, float]]) -> AttackOutcome | None:
        """Rank 0, after the checkpoint is written: the recovery attacks on the applied model (whole: under
        DeepSpeed, rank 0's gathered copy), over this batch's and every earlier request's forget set (before: each
        request's metrics before its own batch)."""
        ev = served.evaluation
        if ev.attacks is None:
            return None
        return attack_requests(model, served.tokenizer, ev.data, ev.template, _settings(ev), ev.attacks,
                               self.current + self.earlier, {**self.earlier_before, **before}, after,
                               set(self.excluded_ids))

    def _write_checkpoint(self, model: torch.nn.Module) -> str:
        """The new model as an HF folder, with which batch made it; written whole, then renamed into place."""
        target = Path(self.checkpoint_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        with written_in_place(target) as partial:
            model.save_pretrained(partial, safe_serialization=True)
            (partial / STATE_FILE).write_text(json.dumps({"batch": self.batch, "requests": self.request_ids}))
        return str(target)


def _settings(evaluation: StreamEvaluation):
    from orchestrator.evaluation import EvalSettings

    return EvalSettings(**evaluation.settings)
