"""What crosses the Ray boundary to and from an unlearning worker: its job, its settings and its summary.

Typed on both sides: the driver builds a `TrainJob` (with `WorkerSettings`, the train config as resolved for this
run), the workers return a `WorkerSummary`. A misspelt or missing field is a `TypeError` where the object is built,
not a silent `None` read on the other side of the boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from methods import ForgetSample
from orchestrator.data.tokenize import EncodedRow
from orchestrator.observe.progress import progress_mode
from orchestrator.worker.batching import UnlearningRows

if TYPE_CHECKING:
    from orchestrator.worker.evaluation import EvaluationJob

EXPORT_DIR = "model"  # the run's unlearned model, under its output folder


@dataclass(frozen=True)
class WorkerSettings:
    """The train config as one run's workers use it: `TrainConfig` with the recipe's lr and epochs, the early-stop
    rule and the CPUs resolved (`orchestrator/run/job.py`), plus the torch threads each worker runs."""

    lr: float = 1e-5
    epochs: int = 1
    batch_size: int = 8
    group_by_length: bool = False  # forget rows of similar length share a batch (orchestrator/worker/batching.py)
    gradient_checkpointing: bool = False  # recompute activations in backward (orchestrator/worker/memory.py)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    lora: dict[str, Any] | None = None  # LoraConfig, dumped
    workers: int = 1
    cpus_per_worker: int = 1
    threads: int | None = None  # torch threads per worker; None: torch's default
    use_gpu: bool = False
    deepspeed: str | None = None  # the DeepSpeed JSON's path (its contents travel in `TrainJob.deepspeed_json`)
    checkpoint_every_epochs: int | None = None
    max_failures: int = 0
    log_every: int = 10
    early_stop: dict[str, Any] | None = None  # EarlyStopConfig, dumped; None: off

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass
class TrainJob:
    """Everything a worker needs for one unlearning run, picklable."""

    target_dir: str
    method_name: str
    method_hparams: dict[str, Any]
    train: WorkerSettings
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
    # How rank 0 shows its progress (`orchestrator/observe/progress.py`): decided where the job is built (the
    # driver, whose terminal the bars reach), since a worker's own stdout is never a terminal.
    progress: str = field(default_factory=progress_mode)


@dataclass
class WorkerSummary:
    """Rank 0's account of a run: what it trained, how long each part took, and the unlearned model's evaluation."""

    history: list[dict[str, float]]
    world_size: int
    timings: dict[str, float]  # worker_setup, train_loop, evaluate, export; the driver adds Ray Train's own
    zero_stage: int | None
    parameters: dict[str, Any]  # {"total": n, "per_worker": [n, ...]}
    steps: int
    epochs_run: int
    early_stop: dict[str, Any] | None
    resumed_from_step: int | None
    kept_forget_indices: list[int] | None
    reference_cache: dict[str, Any]  # ReferenceStats.with_lookups: precomputed rows, hits, misses, hit rate
    device: str
    dtype: str
    threads: int
    evaluation: dict[str, Any] | None  # the unlearned model's EvalReport, as a dict
    clock: dict[str, float] = field(default_factory=dict)  # wall clock entering and leaving the train function
    # tokens, padding share, tokens/s, peak memory per rank (orchestrator/worker/throughput.py)
    throughput: dict[str, Any] = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        return self.timings["train_loop"]
