"""The Ray Train worker loop: load the target, build the method, unlearn, checkpoint, evaluate, export.

Life cycle per worker (torchtune's recipe shape): `setup` (model, reference, adapters, optimizer, engine, resume),
`train` (epochs of `method.training_step`, metrics through `ray.train.report`, a resumable checkpoint every few
epochs), `evaluate` (the trained module, where it is: `orchestrator/worker/evaluation.py`), `export` (rank 0 writes
the unlearned model once, as a consolidated HF folder, straight into the run's `model/`), `finish` (the final
report carries the evaluation's headline numbers, for Ray Train callbacks such as Tune's `TuneReportCallback`; the
train function's return value, which Ray Train hands the driver from rank 0, carries the training summary and the
whole `EvalReport`). The driver receives metrics, never weights. The run's output folder must be reachable from
rank 0's node, as Ray Train's `storage_path` below it must be from every node.

The loop knows the method only through the contract in `methods/base.py`, and the optimizer only through the step
engine: plain PyTorch (`orchestrator/worker/engine.py`) or DeepSpeed ZeRO (`orchestrator/worker/deepspeed_engine.py`, when
`train.deepspeed` names a config). Checkpoints follow Ray Train's DeepSpeed guide: every rank writes its files into
its own folder and reports it; Ray Train merges the folders into one checkpoint, which every rank reads back on a
restart after a worker failure (`FailureConfig(max_failures)`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

import methods
from methods import ForgetSample, UnlearningMethod
from orchestrator.worker.batching import UnlearningBatches, UnlearningRows, with_global_denominators
from orchestrator.data.tokenize import EncodedRow
from orchestrator.worker.early_stop import PerplexityStop
from orchestrator.worker.engine import TorchStepEngine, linear_schedule
from orchestrator.observe.progress import Steps, progress_mode

if TYPE_CHECKING:
    from orchestrator.worker.evaluation import EvaluationJob

TRAIN_STATE = "train_state.pt"
EXPORT_DIR = "model"
HEARTBEAT_S = 60.0  # lines mode: one line per epoch, and within a long epoch at most one a minute


@dataclass
class TrainJob:
    """Everything a worker needs, picklable (it travels in `train_loop_config`)."""

    target_dir: str
    method_name: str
    method_hparams: dict[str, Any]
    train: dict[str, Any]  # TrainConfig.model_dump()
    rows: UnlearningRows
    pad_token_id: int
    dtype: str = "float32"
    forget_samples: list[ForgetSample] = field(default_factory=list)
    holdout_samples: list[ForgetSample] = field(default_factory=list)
    early_stop_rows: list[EncodedRow] = field(default_factory=list)  # train.early_stop's yardstick (retain rows)
    deepspeed_json: dict[str, Any] | None = None  # train.deepspeed's contents, read by the driver
    model_dir: str | None = None  # where rank 0 writes the unlearned model (the run's `model/`)
    tokenizer_dir: str | None = None  # saved beside the model, so that the folder loads on its own
    evaluation: EvaluationJob | None = None  # evaluate the unlearned model on the workers; None: no evaluation
    # How rank 0 shows its progress (`orchestrator/observe/progress.py`): decided where the job is built (the driver, whose
    # terminal the bars reach), since a worker's own stdout is never a terminal.
    progress: str = field(default_factory=progress_mode)


def _report(metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


class UnlearningWorker:
    """One Ray Train worker's share of an unlearning run."""

    def __init__(self, job: TrainJob, checkpoint_folder: Path | None = None,
                 report_tags: dict[str, Any] | None = None,
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> None:
        import ray.train

        self.job = job
        self.cfg = job.train
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        if self.cfg.get("use_gpu"):
            import ray.train.torch

            self.device = ray.train.torch.get_device()
        else:
            self.device = torch.device("cpu")
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.kept: set[int] | None = None
        self.resumed_from_step: int | None = None
        self.stopper: PerplexityStop | None = None  # train.early_stop, built with the method (`build`)
        # Progress reports through `ray.train.report` every `log_every` steps; a stream reports once per request.
        self.report_progress = True
        # Resident workers (`orchestrator/run/resident.py`) serve many runs from one Ray Train run: each run's resumable
        # checkpoint is a folder of its own (not Ray Train's), and its reports say which run they belong to.
        self.checkpoint_folder = checkpoint_folder
        self.report_tags = dict(report_tags or {})
        # ... and a resident run's caller may want them too (a Tune trial forwards them, as `TuneReportCallback`
        # does for a `TorchTrainer` of its own): rank 0 hands each one, untagged, to `on_report`.
        self.on_report = on_report if self.rank == 0 else None

    # --- setup --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """`unlearn run`'s set-up: load the target (and the reference, a second copy of it), build, resume."""
        from orchestrator.models.loading import load_causal_lm

        torch.manual_seed(self.cfg["seed"])
        dtype = getattr(torch, self.job.dtype)
        model = load_causal_lm(self.job.target_dir, dtype=dtype).to(self.device)
        reference = None
        if methods.needs_reference(self.job.method_name, self.job.method_hparams):
            reference = load_causal_lm(self.job.target_dir, dtype=dtype).to(self.device)
        self.build(model, reference)
        self._resume()

    def build(self, model: torch.nn.Module, reference: torch.nn.Module | None = None) -> None:
        """Method, batches, adapters, optimizer and step engine over `model`, already loaded and on the device.

        `setup` calls it with a freshly loaded target; a request stream (`orchestrator/stream/worker.py`) calls it
        once per request with the model it keeps resident and a frozen copy of it as the reference.
        """
        self.ds_config = self._deepspeed_config(model)
        if reference is not None and self.ds_config is not None:
            from orchestrator.worker.deepspeed_engine import sharded_reference

            reference = sharded_reference(reference, self.ds_config)
        self.method: UnlearningMethod = methods.build(self.job.method_name, reference=reference, **self.job.method_hparams)
        parts = ("forget",) + tuple(
            p for p, used in (("retain", self.method.uses_retain), ("alternate", self.method.uses_alternate),
                              ("analogous", self.method.uses_analogous)) if used
        )
        self.batches = UnlearningBatches(
            self.job.rows, self.cfg["batch_size"], self.job.pad_token_id, self.rank, self.world_size,
            self.cfg["seed"], parts,
        )
        model = self._adapters(model, parts)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = self.method.make_optimizer(trainable, self.cfg["lr"], self.cfg["weight_decay"]) or torch.optim.AdamW(
            trainable, lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"]
        )
        total_steps = self.batches.steps_per_epoch() * self.cfg["epochs"]
        if self.ds_config is None:
            self.engine = TorchStepEngine(model, optimizer, linear_schedule(optimizer, total_steps,
                                                                            self.cfg["warmup_ratio"]),
                                          self.cfg["max_grad_norm"])
        else:
            from orchestrator.worker.deepspeed_engine import DeepSpeedStepEngine, collective_reference_cache

            self.engine = DeepSpeedStepEngine(
                model, optimizer, lambda opt: linear_schedule(opt, total_steps, self.cfg["warmup_ratio"]),
                self.ds_config)
            if reference is not None and self.engine.stage == 3 and self.world_size > 1:
                collective_reference_cache(self.method.reference_cache)
        self.model = self.engine.module  # the trained model (peft-wrapped when adapters are trained)
        if self.cfg.get("early_stop"):
            self.stopper = PerplexityStop.from_config(self.cfg["early_stop"], self.job.early_stop_rows,
                                                      self.job.pad_token_id, self.cfg["batch_size"])

    def _deepspeed_config(self, model: torch.nn.Module) -> dict[str, Any] | None:
        if not self.cfg.get("deepspeed"):
            return None
        from orchestrator.worker.deepspeed_engine import deepspeed_config

        bf16 = bool(self.cfg.get("use_gpu")) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return deepspeed_config(self.job.deepspeed_json or self.cfg["deepspeed"], self.cfg, self.world_size, bf16,
                                getattr(model.config, "hidden_size", None))

    def _adapters(self, model: torch.nn.Module, parts: tuple[str, ...]) -> torch.nn.Module:
        """FILA's or `train.lora`'s adapters, applied before any engine wraps the model.

        FILA's Fisher estimate runs over the whole forget set on every worker (not the worker's shard), so that 1 or
        N workers start from the same adapters; rank 0's result is then broadcast so that every copy is identical.
        """
        full = UnlearningBatches(self.job.rows, self.cfg["batch_size"], self.job.pad_token_id, 0, 1,
                                 self.cfg["seed"], parts)
        adapted = self.method.init_adapters(
            model,
            (self._to_device(b["forget"]) for b in full.epoch(0)),
            (self._to_device(b["retain"]) for b in full.epoch(0) if "retain" in b),
        )
        if adapted is model and self.cfg.get("lora"):
            from peft import LoraConfig, get_peft_model

            lora = self.cfg["lora"]
            adapted = get_peft_model(model, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"],
                                                       target_modules=lora["target_modules"], task_type="CAUSAL_LM"))
        if adapted is not model and self.world_size > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for tensor in adapted.state_dict().values():
                    dist.broadcast(tensor, src=0)
        return adapted

    def _resume(self) -> None:
        import ray.train

        if self.checkpoint_folder is not None:
            if not (self.checkpoint_folder / TRAIN_STATE).is_file():
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
        self.history, self.kept = state["history"], state["kept"]
        if self.stopper is not None and state.get("early_stop"):
            self.stopper.restore(state["early_stop"])
        self.resumed_from_step = self.global_step
        if self.kept is not None:
            self.batches.rows = self.job.rows.keep(self.kept)
        if self.rank == 0:
            print(f"[unlearn] resumed from checkpoint at epoch {self.epoch}, step {self.global_step}", flush=True)

    def _load_checkpoint(self, folder: Path) -> dict[str, Any]:
        self.engine.load(str(folder))
        return torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=False)

    # --- train --------------------------------------------------------------------------------------------
    def train(self) -> None:
        epochs, log_every = self.cfg["epochs"], self.cfg["log_every"]
        started = last_line = time.perf_counter()
        shown = Steps(f"unlearn {self.job.method_name}", initial=self.global_step, on_worker=True,
                      mode=self.job.progress if self.rank == 0 else "off", emit=lambda m: print(m, flush=True))
        if self.stopper is not None:
            self.stopper.start(self.model, self.device, self._agreed)
        every_steps = (self.cfg.get("early_stop") or {}).get("every_steps")
        stopped = self.stopper is not None and self.stopper.stopped is not None  # resumed after the stop
        while self.epoch < epochs and not stopped:
            steps = self.batches.steps_per_epoch()  # ICU's refinement shrinks the forget set between epochs
            shown.set_total(self.global_step + steps * (epochs - self.epoch))
            window: list[dict[str, float]] = []
            for step_in_epoch, batch in enumerate(self.batches.epoch(self.epoch)):
                batch = {name: self._to_device(part) for name, part in batch.items()}
                batch = with_global_denominators(batch, self.world_size)  # means over the global batch
                logs = self.method.training_step(self.engine.model, batch, self.engine)
                self.global_step += 1
                shown.advance()
                _fault_injection(self.cfg, self.rank, self.global_step)
                window.append(logs)
                if self.global_step % log_every == 0 or step_in_epoch + 1 == steps:
                    metrics = self._across_workers(self._average(window))
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
                        self._tagged_report(metrics)
                if every_steps and self.global_step % every_steps == 0 and step_in_epoch + 1 < steps:
                    stopped = self._early_stop(self.epoch + (step_in_epoch + 1) / steps)
                    if stopped:
                        break
            if stopped:  # mid-epoch: the epoch does not count as run
                break
            self.epoch += 1
            if self.stopper is not None and self._early_stop(float(self.epoch)):
                break
            stop = self._refine_forget_set()
            if stop:
                break
            every = self.cfg["checkpoint_every_epochs"] or (1 if self.cfg["max_failures"] else 0)
            if every and self.epoch % every == 0 and self.epoch < epochs:
                self._checkpoint()
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
        """Let the method shrink the forget set (ICU); True when nothing is left to forget."""
        if not self.job.forget_samples:
            return False
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
        renamed into place (`_written_in_place`), so that a reader never sees half a checkpoint."""
        metrics = {"epoch": float(self.epoch), "step": self.global_step, "checkpoint": 1.0}
        if self.checkpoint_folder is not None:
            if self.rank == 0:
                with _written_in_place(self.checkpoint_folder) as partial:
                    partial.mkdir(parents=True)
                    self._save_checkpoint(str(partial))
            self._tagged_report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            wrote = self._save_checkpoint(folder)
            _report(metrics, folder if wrote else None)

    def _save_checkpoint(self, folder: str) -> bool:
        wrote = self.engine.save(folder, self.rank)
        if self.rank == 0:
            torch.save({"epoch": self.epoch, "global_step": self.global_step, "history": self.history,
                        "kept": self.kept, "early_stop": self.stopper.state() if self.stopper else None},
                       Path(folder) / TRAIN_STATE)
            wrote = True
        return bool(wrote)

    def _tagged_report(self, metrics: dict[str, Any]) -> None:
        _report({**metrics, **self.report_tags})
        if self.on_report is not None:
            self.on_report(dict(metrics))

    # --- export, evaluate, finish ----------------------------------------------------------------------------
    def export(self) -> None:
        """Rank 0 writes the consolidated HF model (LoRA merged) and the tokenizer into `job.model_dir`, once.

        Written into a sibling folder and renamed into place (`_written_in_place`).
        """
        state = self.engine.full_state_dict()  # a collective under ZeRO-3: every rank takes part
        if self.rank != 0 or self.job.model_dir is None:
            return
        with _written_in_place(Path(self.job.model_dir)) as partial:
            self._export_model(state).save_pretrained(partial, safe_serialization=True)
            if self.job.tokenizer_dir:
                from orchestrator.run.prepare import load_tokenizer

                load_tokenizer(self.job.tokenizer_dir).save_pretrained(partial)

    def evaluate(self) -> dict[str, Any] | None:
        """The unlearned model's `EvalReport` dict on rank 0 (None elsewhere, or without `job.evaluation`)."""
        if self.job.evaluation is None:
            return None
        # Imported here, not with the module: a worker process imports this module before the run starts, and the
        # metrics' dependencies (nltk, rouge) are evaluation's cost.
        from orchestrator.worker.evaluation import evaluate_where_trained

        partitioned = self.ds_config is not None and self.engine.stage == 3
        return evaluate_where_trained(self.model, self.job.evaluation, self.rank, self.world_size, partitioned,
                                      progress=self.job.progress)

    def finish(self, timings: dict[str, float], evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
        """Every rank's last report; rank 0 returns the run's summary (the train function's return value)."""
        local, total = self.engine.partition_numel()
        per_worker = self._gather(local)
        after = evaluation["summary"] if evaluation else None
        self._tagged_report({"epoch": float(self.epoch), "step": self.global_step, "final": 1.0,
                             **({"after": after} if after is not None else {})})
        if self.rank != 0:
            return None
        return {"history": self.history, "world_size": self.world_size, "timings": timings,
                "train_seconds": timings["train_loop"],
                "zero_stage": None if self.ds_config is None else self.engine.stage,
                "parameters": {"total": total, "per_worker": per_worker},
                "steps": self.global_step, "epochs_run": self.epoch,
                "early_stop": self.stopper.summary() if self.stopper is not None else None,
                "resumed_from_step": self.resumed_from_step,
                "kept_forget_indices": sorted(self.kept) if self.kept is not None else None,
                "reference_cache": {"hits": self.method.reference_cache.hits,
                                    "misses": self.method.reference_cache.misses},
                "device": str(self.device), "dtype": self.job.dtype, "threads": torch.get_num_threads(),
                "evaluation": evaluation}

    def _export_model(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A plain HF model holding `state` (LoRA merged into the base weights).

        Under DeepSpeed the trained module's parameters may be partitioned (ZeRO-3) or cast (bf16), so the state is
        loaded into a fresh copy of the target model (wrapped in the same adapters) on rank 0.
        """
        model = self.model
        if self.ds_config is not None:
            from orchestrator.models.loading import load_causal_lm

            model = load_causal_lm(self.job.target_dir, dtype=getattr(torch, self.job.dtype))
            if hasattr(self.model, "peft_config"):
                import copy

                from peft import get_peft_model

                model = get_peft_model(model, copy.deepcopy(self.model.peft_config["default"]))
            model.load_state_dict(state)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        return model

    # --- helpers ------------------------------------------------------------------------------------------
    def _to_device(self, part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in part.items()}

    @staticmethod
    def _average(window: list[dict[str, float]]) -> dict[str, float]:
        keys = {k for logs in window for k in logs}
        return {k: sum(logs.get(k, 0.0) for logs in window) / len(window) for k in keys}

    def _across_workers(self, logs: dict[str, float]) -> dict[str, float]:
        """The mean of each logged value over the workers; the same on every rank. A loss's mean over the workers is
        the global batch's: each worker logs its share, its sums over the global counts (`with_global_denominators`)."""
        if self.world_size == 1:
            return logs
        import torch.distributed as dist

        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).tolist()))

    def _agreed(self, value: float) -> float:
        """The workers' mean of `value`: one number every rank decides on alike."""
        return self._across_workers({"value": value})["value"]

    def _gather(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered


@contextlib.contextmanager
def _written_in_place(target: Path) -> Iterator[Path]:
    """A sibling folder to write `target`'s files into, renamed over `target` when the block ends: a reader never
    sees half of it, and files of an earlier version (another shard layout) do not linger beside the new ones."""
    import shutil

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _fault_injection(cfg: dict[str, Any], rank: int, global_step: int) -> None:
    """Fault-injection hook for the worker-failure test (tests/orchestrator/test_distributed.py); inert otherwise.

    When the job's train dict carries `_kill_at_step: k` (with `_kill_rank`, default 1, and `_kill_marker`, a file
    path), that rank SIGKILLs its own process after global step k, once: the marker file records that it already
    died, so the restarted worker group runs through. Not a config field: `TrainConfig` refuses unknown keys.
    """
    if cfg.get("_kill_at_step") != global_step or rank != cfg.get("_kill_rank", 1):
        return
    marker = Path(cfg["_kill_marker"])
    if marker.exists():
        return
    marker.write_text(f"rank {rank} killed itself at step {global_step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _quiet_ray_train_reports() -> None:
    """Ray Train V2 logs every `report` call at INFO through a logger named after its file, out of reach of
    `LoggingConfig`; our own progress lines already say the same, so keep only its warnings."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: leave its logging as it is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point: `config["job"]` is a `TrainJob`; rank 0 returns the run's summary."""
    entered = time.time()  # wall clock, for the driver's view of Ray Train's start and finish
    job: TrainJob = config["job"]
    prepare_worker_process(job)
    summary = unlearn_on_worker(job)
    if summary is not None:
        summary["clock"] = {"entered": entered, "left": time.time()}
    return summary


def prepare_worker_process(job: TrainJob) -> None:
    """Once per worker process (and per job, for resident workers): quiet logs and warnings, set the threads."""
    _quiet_ray_train_reports()
    from orchestrator.models.loading import quiet_progress_bars

    quiet_progress_bars()
    if job.train.get("deepspeed"):
        import warnings

        # DeepSpeed 0.19 calls all_gather_into_tensor / reduce_scatter_tensor, deprecated in torch 2.13: once per
        # collective, hundreds per step.
        warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    threads = job.train.get("threads")
    if threads:
        torch.set_num_threads(threads)


def unlearn_on_worker(job: TrainJob, checkpoint_folder: Path | None = None,
                      report_tags: dict[str, Any] | None = None,
                      on_report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """One worker's whole run (set-up, train, evaluate, export, finish); rank 0 returns the run's summary.

    `checkpoint_folder`: resident workers' own resumable checkpoint for this run (else Ray Train's);
    `report_tags`: added to every report, so that a resident worker group's callbacks know whose it is;
    `on_report`: rank 0 also hands it every report (untagged), for the resident run's caller."""
    started = time.perf_counter()
    worker = UnlearningWorker(job, checkpoint_folder, report_tags, on_report)
    worker.setup()
    set_up = time.perf_counter()
    worker.train()
    trained = time.perf_counter()
    evaluation = worker.evaluate()  # before the export, which may merge LoRA adapters into the trained module
    evaluated = time.perf_counter()
    worker.export()
    exported = time.perf_counter()
    # "train_loop" keeps its earlier meaning (set-up included: loading the model is part of training it).
    timings = {"worker_setup": set_up - started, "train_loop": trained - started, "evaluate": evaluated - trained,
               "export": exported - evaluated}
    return worker.finish({k: round(v, 3) for k, v in timings.items()}, evaluation)
