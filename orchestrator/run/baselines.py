"""The models around the unlearned one, evaluated where the run's workers are: never on the driver.

Every run reads its metrics against the target (the model before unlearning) and the retain model (one that never
saw the forget set): their evaluation reports and, with `eval.attacks`, their attack results (`prepare.py` caches
both per problem). For a 7B checkpoint each is tens of GB of weights and hours of CPU, so they run as a Ray task with
the run's worker shape (CPUs, GPU, dtype), or, when the caller already holds a resident worker group, as a task of
that group (whose CPUs a separate task could never get). The driver receives reports, never weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.attacks.config import AttacksConfig
from orchestrator.config import ExperimentConfig
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.evaluation import EvalReport, EvalSettings
from orchestrator.observe.progress import Progress
from orchestrator.run.feed import Forward, WorkerSlot


@dataclass(frozen=True)
class Placement:
    """Where a baseline runs: the run's worker shape."""

    cpus: int
    use_gpu: bool
    dtype: str


@dataclass(frozen=True)
class EvaluateModel:
    """The evaluation report of the model in `model_dir` (a `WorkerTask`: rank 0 answers)."""

    model_dir: str
    tokenizer_dir: str
    data: UnlearningData
    template: PromptTemplate
    settings: EvalSettings
    placement: Placement
    retain_reference: EvalReport | None = None

    def compute(self) -> dict[str, Any]:
        from orchestrator.evaluation import evaluate_model

        model, tokenizer = _load(self.model_dir, self.tokenizer_dir, self.placement)
        return evaluate_model(model, tokenizer, self.data, self.template, self.settings,
                              retain_reference=self.retain_reference).to_dict()

    def run(self, slot: WorkerSlot, forward: Forward | None) -> dict[str, Any] | None:
        return _on_rank_zero(self)


@dataclass(frozen=True)
class AttackModel:
    """The recovery attacks `plan` on the model in `model_dir`, over `forget` (a `WorkerTask`: rank 0 answers)."""

    model_dir: str
    tokenizer_dir: str
    data: UnlearningData
    forget: tuple[Example, ...]
    template: PromptTemplate
    settings: EvalSettings
    plan: AttacksConfig
    placement: Placement

    def compute(self) -> dict[str, dict[str, Any]]:
        from orchestrator.attacks.run import run_attacks

        model, tokenizer = _load(self.model_dir, self.tokenizer_dir, self.placement)
        results = run_attacks(model, tokenizer, self.data, self.forget, self.template, self.settings, self.plan)
        return {r.name: r.to_dict() for r in results}

    def run(self, slot: WorkerSlot, forward: Forward | None) -> dict[str, dict[str, Any]] | None:
        return _on_rank_zero(self)


Baseline = EvaluateModel | AttackModel


class BaselineRunner:
    """Runs baselines on the run's resident worker group when it is up, else as a Ray task of the run's shape (in
    the Ray the run uses: connected on the first baseline, if the caller has not connected yet)."""

    def __init__(self, config: ExperimentConfig, workers: Any = None, progress: Progress = print,
                 cpus_per_worker: int | None = None) -> None:
        self.config = config
        self.workers = workers  # a ResidentWorkers, or None
        self.progress = progress
        # The run's CPUs per worker, read by the caller before any baseline ran: Ray's count of free CPUs lags a
        # finished task, so reading it after one would give the run fewer CPUs than it has.
        self.cpus_per_worker = cpus_per_worker or (workers.cpus_per_worker if workers is not None else None)

    @property
    def placement(self) -> Placement:
        from orchestrator.run.job import worker_settings

        if self.cpus_per_worker is None:
            self.cpus_per_worker = worker_settings(self.config).cpus_per_worker
        shape = worker_settings(self.config, self.cpus_per_worker)
        return Placement(shape.cpus_per_worker, shape.use_gpu, self.config.model.dtype)

    def __call__(self, baseline: Baseline) -> Any:
        if self.workers is not None and self.workers.alive:
            return self.workers.run(baseline)
        import ray

        if not ray.is_initialized():
            from orchestrator.run.ray_session import connect_ray

            connect_ray(self.config.ray.address, self.config.ray.num_cpus, self.progress)
        task = ray.remote(_compute).options(num_cpus=self.placement.cpus,
                                            num_gpus=1 if self.placement.use_gpu else 0)
        return ray.get(task.remote(baseline))


def _compute(baseline: Baseline) -> Any:
    """A Ray task's body: the process set up as a worker's (threads = its CPUs, quiet logs), then the baseline."""
    from orchestrator.worker.entry import prepare_worker_process

    prepare_worker_process(baseline.placement.cpus)
    return baseline.compute()


def _on_rank_zero(baseline: Baseline) -> Any:
    import ray.train

    if ray.train.get_context().get_world_rank() != 0:
        return None
    return baseline.compute()


def _load(model_dir: str, tokenizer_dir: str, placement: Placement):
    import torch

    from orchestrator.models.loading import load_causal_lm, load_tokenizer

    device = torch.device("cuda" if placement.use_gpu and torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_dir, dtype=getattr(torch, placement.dtype)).to(device)
    return model, load_tokenizer(tokenizer_dir)
