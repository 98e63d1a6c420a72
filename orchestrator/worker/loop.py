"""The Ray Train worker's unlearning loop: build the method over a model, train it, checkpoint, export.

Life cycle per worker (torchtune's recipe shape): `setup` (model, reference, adapters, optimizer, engine, resume),
`train` (epochs of `method.training_step`, metrics through `ray.train.report`, a resumable checkpoint every few
epochs), `evaluate` (the trained module, where it is: `orchestrator/worker/evaluation.py`), `export` (rank 0 writes
the unlearned model once, as a consolidated HF folder, straight into the run's `model/`), `finish` (the final
report carries the evaluation's headline numbers, for Ray Train callbacks such as Tune's `TuneReportCallback`; rank
0's `WorkerSummary` carries the training summary and the whole `EvalReport`). The driver receives metrics, never
weights. `orchestrator/worker/entry.py` strings the steps together for `unlearn run` and sweeps; a request stream
(`orchestrator/stream/worker.py`) calls `build`, `train` and `trained_model` once per request over the model it
keeps resident.

The loop knows the method only through the contract in `methods/base.py`, and the optimizer only through the step
engine: plain PyTorch (`orchestrator/worker/engine.py`) or DeepSpeed ZeRO (`orchestrator/worker/deepspeed_engine.py`,
when `train.deepspeed` names a config). Checkpoints follow Ray Train's DeepSpeed guide: every rank writes its files
into its own folder and reports it; Ray Train merges the folders into one checkpoint, which every rank reads back on
a restart after a worker failure (`FailureConfig(max_failures)`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

import methods
from methods import UnlearningMethod
from orchestrator.observe.progress import Steps
from orchestrator.worker.adapters import lay_adapters
from orchestrator.worker.batching import UnlearningBatches, with_global_denominators
from orchestrator.worker.checkpoint import has_train_state, load_train_state, save_train_state, written_in_place
from orchestrator.worker.early_stop import PerplexityStop
from orchestrator.worker.engine import TorchStepEngine, linear_schedule
from orchestrator.worker.job import TrainJob, WorkerSummary
from orchestrator.worker.memory import set_gradient_checkpointing
from orchestrator.worker.reference_values import settle_reference
from orchestrator.worker.ranks import across_workers, gather, worker_context
from orchestrator.worker.throughput import Throughput
from orchestrator.worker.reports import report

if TYPE_CHECKING:
    from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine

HEARTBEAT_S = 60.0  # lines mode: one line per epoch, and within a long epoch at most one a minute


class UnlearningWorker:
    """One Ray Train worker's share of an unlearning run.

    `checkpoint_folder`: the run's own resumable checkpoint (resident workers serve many runs from one Ray Train
    run, so each run's checkpoint is a folder of its own); None: Ray Train's checkpoints. `report_tags` go with
    every report, so that a resident group's callbacks know whose it is; rank 0 also hands each report, untagged,
    to `on_report` (a Tune trial forwards them, as `TuneReportCallback` does for a `TorchTrainer` of its own).
    `report_progress`: report metrics every `log_every` steps (a stream reports once per request instead)."""

    def __init__(self, job: TrainJob, checkpoint_folder: Path | None = None,
                 report_tags: dict[str, Any] | None = None,
                 on_report: Callable[[dict[str, Any]], None] | None = None, report_progress: bool = True) -> None:
        self.job = job
        self.cfg = job.train
        self.rank, self.world_size, self.device = worker_context(self.cfg.use_gpu)
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.kept: set[int] | None = None
        self.resumed_from_step: int | None = None
        self.stopper: PerplexityStop | None = None  # train.early_stop, built with the method (`build`)
        self.report_progress = report_progress
        self.checkpoint_folder = checkpoint_folder
        self.report_tags = dict(report_tags or {})
        self.on_report = on_report if self.rank == 0 else None
        self.throughput = Throughput()

    # --- setup --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """`unlearn run`'s set-up: load the target (and the reference, a second copy of it), build, resume."""
        from orchestrator.models.loading import load_causal_lm

        torch.manual_seed(self.cfg.seed)
        self.build(load_causal_lm(self.job.target_dir, dtype=getattr(torch, self.job.dtype)).to(self.device))
        self.resume()

    def build(self, model: torch.nn.Module, engine: "DeepSpeedStepEngine | None" = None) -> None:
        """Method, batches, reference values, adapters, optimizer and step engine over `model`, already loaded and
        on the device. `model` is the reference as it stands: what the method reads of it is computed before any
        step (`orchestrator/worker/reference_values.py`), so no second copy is held unless the method keeps one.

        `engine`: the DeepSpeed engine an earlier run left over this same `model` (a stream's resident model, whose
        parameters ZeRO-3 has partitioned): restarted (`DeepSpeedStepEngine.restart`) instead of built again, with
        the optimizer it was built with (the stream's method is the same for every request)."""
        self.ds_config = engine.config if engine is not None else self._deepspeed_config(model)
        needs_reference = methods.needs_reference(self.job.method_name, self.job.method_hparams)
        self.method: UnlearningMethod = methods.build(self.job.method_name, reference=model if needs_reference
                                                      else None, **self.job.method_hparams)
        parts = ("forget",) + tuple(
            p for p, used in (("retain", self.method.uses_retain), ("alternate", self.method.uses_alternate),
                              ("analogous", self.method.uses_analogous)) if used
        )
        self.batches = UnlearningBatches(self.job.rows, self.cfg.batch_size, self.job.pad_token_id, self.rank,
                                         self.world_size, self.cfg.seed, parts, self.cfg.group_by_length)
        self.reference_stats = settle_reference(self.method, model, self.batches, self.cfg.epochs, self._to_device,
                                                self.rank, self.ds_config)
        model.requires_grad_(True)  # it was frozen as the reference; the method restricts what trains, below
        set_gradient_checkpointing(model, self.cfg.gradient_checkpointing)  # the bare model, before any wrapper
        total_steps = self.batches.steps_per_epoch() * self.cfg.epochs
        if engine is not None:
            if self.method.profile.adapters is not None or self.cfg.lora:
                raise RuntimeError("adapters cannot be laid over a model an engine already holds")
            model.train()
            self.method.restrict_trainable(model)  # the same parameters as when the engine was built
            engine.restart(self.cfg.lr, lambda opt: linear_schedule(opt, total_steps, self.cfg.warmup_ratio))
            self.engine = engine
            self.model = engine.module
            self._build_stopper()
            return
        model = lay_adapters(model, self.method, self.job, parts, self.world_size, self._to_device)
        model.train()
        self.method.restrict_trainable(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.method.make_optimizer(trainable, self.cfg.lr, self.cfg.weight_decay) or torch.optim.AdamW(
            trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.ds_config is None:
            self.engine = TorchStepEngine(model, optimizer,
                                          linear_schedule(optimizer, total_steps, self.cfg.warmup_ratio),
                                          self.cfg.max_grad_norm)
        else:
            from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine, collective_reference_cache

            self.engine = DeepSpeedStepEngine(
                model, optimizer, lambda opt: linear_schedule(opt, total_steps, self.cfg.warmup_ratio),
                self.ds_config)
            if self.method.reference is not None and self.engine.stage == 3 and self.world_size > 1:
                collective_reference_cache(self.method.reference_cache)  # a kept, sharded reference
        self.model = self.engine.module  # the trained model (peft-wrapped when adapters are trained)
        self._build_stopper()

    def _build_stopper(self) -> None:
        if self.cfg.early_stop:
            self.stopper = PerplexityStop.from_config(self.cfg.early_stop, self.job.early_stop_rows,
                                                      self.job.pad_token_id, self.cfg.batch_size)

    def _deepspeed_config(self, model: torch.nn.Module) -> dict[str, Any] | None:
        if not self.cfg.deepspeed:
            return None
        from orchestrator.worker.deepspeed_engine import deepspeed_config

        bf16 = self.cfg.use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return deepspeed_config(self.job.deepspeed_json or self.cfg.deepspeed, self.cfg.as_dict(), self.world_size,
                                bf16, getattr(model.config, "hidden_size", None))

    def resume(self) -> None:
        """Continue from the run's last checkpoint, if it has one (its own folder, else Ray Train's)."""
        import ray.train

        if self.checkpoint_folder is not None:
            if not has_train_state(self.checkpoint_folder):
                return
            try:
                state = self._load_checkpoint(self.checkpoint_folder)
            except Exception as err:  # written whole and renamed into place: damaged from outside; say which
                raise RuntimeError(f"the run's checkpoint {self.checkpoint_folder} cannot be read "
                                   f"({type(err).__name__}: {err}); remove it to start the run afresh") from err
        else:
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is None:
                return
            with checkpoint.as_directory() as folder:
                state = self._load_checkpoint(Path(folder))
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.history = state["history"]
        self.kept = set(state["kept"]) if state["kept"] is not None else None
        if self.stopper is not None and state.get("early_stop"):
            self.stopper.restore(state["early_stop"])
        if state.get("method"):
            self.method.load_method_state(state["method"])
        self.resumed_from_step = self.global_step
        if self.kept is not None:
            self.batches.rows = self.job.rows.keep(self.kept)
        if self.rank == 0:
            print(f"[unlearn] resumed from checkpoint at epoch {self.epoch}, step {self.global_step}", flush=True)

    def _load_checkpoint(self, folder: Path) -> dict[str, Any]:
        self.engine.load(str(folder))
        return load_train_state(folder)

    # --- train --------------------------------------------------------------------------------------------
    def train(self) -> None:
        epochs, log_every = self.cfg.epochs, self.cfg.log_every
        started = last_line = time.perf_counter()
        shown = Steps(f"unlearn {self.job.method_name}", initial=self.global_step, on_worker=True,
                      mode=self.job.progress if self.rank == 0 else "off", emit=lambda m: print(m, flush=True))
        if self.stopper is not None:
            self.stopper.start(self.model, self.device, self._agreed)
        every_steps = (self.cfg.early_stop or {}).get("every_steps")
        stopped = self.stopper is not None and self.stopper.stopped is not None  # resumed after the stop
        while self.epoch < epochs and not stopped:
            steps = self.batches.steps_per_epoch()  # ICU's refinement shrinks the forget set between epochs
            shown.set_total(self.global_step + steps * (epochs - self.epoch))
            window: list[dict[str, float]] = []
            for step_in_epoch, batch in enumerate(self.batches.epoch(self.epoch)):
                self.throughput.count(batch)  # on the host, before the copy: no device sync per step
                batch = {name: self._to_device(part) for name, part in batch.items()}
                batch = with_global_denominators(batch, self.world_size)  # means over the global batch
                logs = self.method.training_step(self.engine.model, batch, self.engine)
                self.global_step += 1
                shown.advance()
                window.append(logs)
                if self.global_step % log_every == 0 or step_in_epoch + 1 == steps:
                    metrics = across_workers(_average(window), self.world_size, self.device)
                    metrics.update(epoch=self.epoch + (step_in_epoch + 1) / steps, step=self.global_step,
                                   lr=self.engine.optimizer.param_groups[0]["lr"],
                                   forget_size=len(self.batches.rows.forget))
                    self.history.append(metrics)
                    shown.describe(f"epoch {self.epoch + 1}/{epochs} loss {metrics['loss']:.4f}")
                    now = time.perf_counter()
                    if step_in_epoch + 1 == steps or now - last_line >= HEARTBEAT_S:
                        shown.line(f"[unlearn] epoch {self.epoch + 1}/{epochs} step {step_in_epoch + 1}/{steps} "
                                   f"loss {metrics['loss']:.4f} ({now - started:.0f}s)")
                        last_line = now
                    window = []
                    if self.report_progress:
                        self.tagged_report(metrics)
                if every_steps and self.global_step % every_steps == 0 and step_in_epoch + 1 < steps:
                    stopped = self._early_stop(self.epoch + (step_in_epoch + 1) / steps)
                    if stopped:
                        break
            if stopped:  # mid-epoch: the epoch does not count as run
                break
            self.epoch += 1
            if self.stopper is not None and self._early_stop(float(self.epoch)):
                break
            if self._refine_forget_set():
                break
            every = self.cfg.checkpoint_every_epochs or (1 if self.cfg.max_failures else 0)
            if every and self.epoch % every == 0 and self.epoch < epochs:
                self._checkpoint()
        self.throughput.seconds += time.perf_counter() - started
        shown.close()

    def _early_stop(self, epoch: float) -> bool:
        """train.early_stop's check (every rank scores the same rows, so every rank decides alike)."""
        assert self.stopper is not None
        if not self.stopper.check(self.model, self.device, epoch, self.global_step, self._agreed):
            return False
        if self.rank == 0:
            stopped = self.stopper.stopped or {}
            print(f"[unlearn] early stop at epoch {epoch:g} (step {self.global_step}): retain perplexity "
                  f"{stopped.get('ratio', 0):.3f}x its value before unlearning, over the "
                  f"{self.stopper.perplexity_rise:g}x bound", flush=True)
        return True

    def _refine_forget_set(self) -> bool:
        """The method's epoch-end hook: it may shrink the forget set (ICU) or learn from the epoch (PDU's dual
        variable); True when nothing is left to forget. Only a refining method is given the forget samples."""
        current = {row.index for row in self.batches.rows.forget}
        samples = [s for s in self.job.forget_samples if s.index in current]
        model = self.engine.model
        model.eval()
        kept = self.method.on_epoch_end(model, samples, self.job.holdout_samples)
        model.train()
        if kept is None:
            return False
        self.kept = set(kept) & current
        if self.rank == 0:
            print(f"[unlearn] forget set refined: {len(self.kept)}/{len(current)} samples still remembered", flush=True)
        if not self.kept:
            return True
        self.batches.rows = self.job.rows.keep(self.kept)
        return False

    def _checkpoint(self) -> None:
        """Every rank saves its part (DeepSpeed: its ZeRO shard; plain torch: rank 0 only) and reports its folder.

        Resident workers write rank 0's files into the run's own checkpoint folder instead (plain engines only),
        renamed into place, so that a reader never sees half a checkpoint."""
        metrics = {"epoch": float(self.epoch), "step": self.global_step, "checkpoint": 1.0}
        if self.checkpoint_folder is not None:
            if self.rank == 0:
                with written_in_place(self.checkpoint_folder) as partial:
                    partial.mkdir(parents=True)
                    self._save_checkpoint(partial)
            self.tagged_report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            wrote = self._save_checkpoint(Path(folder))
            report(metrics, folder if wrote else None)

    def _save_checkpoint(self, folder: Path) -> bool:
        wrote = self.engine.save(str(folder), self.rank)
        if self.rank == 0:
            save_train_state(folder, {
                "epoch": self.epoch, "global_step": self.global_step, "history": self.history,
                "kept": sorted(self.kept) if self.kept is not None else None,
                "early_stop": self.stopper.state() if self.stopper else None,
                "method": self.method.method_state()})
            wrote = True
        return bool(wrote)

    def tagged_report(self, metrics: dict[str, Any]) -> None:
        """Report `metrics` to Ray Train with this run's tags (and hand them to `on_report` on rank 0)."""
        report({**metrics, **self.report_tags})
        if self.on_report is not None:
            self.on_report(dict(metrics))

    # --- export, evaluate, finish ----------------------------------------------------------------------------
    def export(self) -> None:
        """Rank 0 writes the consolidated HF model (LoRA merged) and the tokenizer into `job.model_dir`, once."""
        model = self.trained_model()  # a collective under ZeRO-3: every rank takes part
        if self.rank != 0 or self.job.model_dir is None:
            return
        with written_in_place(Path(self.job.model_dir)) as partial:
            model.save_pretrained(partial, safe_serialization=True)
            if self.job.tokenizer_dir:
                from orchestrator.models.loading import load_tokenizer

                load_tokenizer(self.job.tokenizer_dir).save_pretrained(partial)

    def trained_model(self) -> torch.nn.Module:
        """The trained weights as a plain HF model (LoRA and FILA adapters merged into the base weights).

        Under DeepSpeed the trained module's parameters may be partitioned (ZeRO-3) or cast (bf16), so the full state
        (gathered by every rank: call it on every rank) is loaded into a fresh copy of the target model (wrapped in
        the same adapters) on rank 0."""
        state = self.engine.full_state_dict()
        model = self.model
        if self.ds_config is not None:
            if self.rank != 0:
                return model
            from orchestrator.models.loading import fresh_copy_of

            model = fresh_copy_of(self.model, self.job.target_dir, getattr(torch, self.job.dtype))
            model.load_state_dict(state)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model

    def evaluate(self) -> dict[str, Any] | None:
        """The unlearned model's `EvalReport` dict on rank 0 (None elsewhere, or without `job.evaluation`)."""
        if self.job.evaluation is None:
            return None
        # Imported here, not with the module: a worker process imports this module before the run starts, and the
        # metrics' dependencies (nltk, rouge) are evaluation's cost.
        from orchestrator.worker.evaluation import evaluate_where_trained, gathered_model

        model = self.model
        if self.ds_config is not None and self.engine.stage == 3:  # the weights gathered once, not per forward
            model = gathered_model(self.model, self.job.target_dir, self.job.dtype, self.device)
        return evaluate_where_trained(model, self.job.evaluation, self.rank, self.world_size,
                                      progress=self.job.progress)

    def finish(self, timings: dict[str, float], evaluation: dict[str, Any] | None) -> WorkerSummary | None:
        """Every rank's last report; rank 0 returns the run's summary."""
        local, total = self.engine.partition_numel()
        per_worker = gather(local, self.world_size)
        throughput = self.throughput.across_ranks(self.world_size, self.device)
        after = evaluation["summary"] if evaluation else None
        self.tagged_report({"epoch": float(self.epoch), "step": self.global_step, "final": 1.0,
                            **({"after": after} if after is not None else {})})
        if self.rank != 0:
            return None
        return WorkerSummary(
            history=self.history, world_size=self.world_size, timings=timings,
            zero_stage=None if self.ds_config is None else self.engine.stage,
            parameters={"total": total, "per_worker": per_worker}, steps=self.global_step, epochs_run=self.epoch,
            early_stop=self.stopper.summary() if self.stopper is not None else None,
            resumed_from_step=self.resumed_from_step,
            kept_forget_indices=sorted(self.kept) if self.kept is not None else None,
            reference_cache=self.reference_stats.with_lookups(self.method.reference_cache),
            device=str(self.device), dtype=self.job.dtype, threads=torch.get_num_threads(), evaluation=evaluation,
            throughput=throughput)

    # --- helpers ------------------------------------------------------------------------------------------
    def _to_device(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in part.items()}

    def _agreed(self, value: float) -> float:
        """The workers' mean of `value`: one number every rank decides on alike."""
        return across_workers({"value": value}, self.world_size, self.device)["value"]


def _average(window: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for logs in window for k in logs}
    return {k: sum(logs.get(k, 0.0) for logs in window) / len(window) for k in keys}
