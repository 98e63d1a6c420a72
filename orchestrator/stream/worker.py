"""The resident Ray Train function of a stream: load the model once, then apply request after request.

`stream_loop_per_worker` loads the starting model (the target, or the last applied checkpoint after a restart)
and loops: rank 0 takes the next message from the driver's feed (a `ray.util.queue.Queue`) and broadcasts it, so
every rank works on the same batch; each batch is unlearned by the same code as `unlearn run` (a `TrainJob` per
batch, `UnlearningWorker.build` over the resident model, `UnlearningWorker.train`), with a frozen copy of the model
as it was before the batch for the methods that need a reference (NPO, UnDIAL: the model the request is applied
to). Then rank 0 evaluates (the batch's forget sets, every earlier applied one, utility), the guard decides, and
either every rank reports a checkpoint of the new model (`ray.train.report`, one per applied batch, named after the
batch) or the model is restored from a CPU copy taken before the batch. The result goes back on the results queue.

Plain PyTorch engines only: a DeepSpeed engine cannot be rebuilt over a module another engine has already wrapped
(ZeRO hooks), so `train.deepspeed` is refused by the driver.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import methods
from orchestrator.worker.batching import UnlearningRows
from orchestrator.data.schema import Example, UnlearningData
from orchestrator.data.tokenize import PromptTemplate
from orchestrator.run.feed import next_message
from orchestrator.worker.loop import TrainJob, UnlearningWorker, _quiet_ray_train_reports

STATE_FILE = "stream_state.json"


@dataclass
class StreamJob:
    """Everything the workers need; picklable (it travels in `train_loop_config`)."""

    base_dir: str  # the model the stream continues from
    tokenizer_dir: str
    train: dict[str, Any]  # resolved TrainConfig dict; each batch sets its own lr and epochs
    data: UnlearningData  # retain / neighbour / world for utility, retain rows for the methods that use them
    template: PromptTemplate
    eval_settings: dict[str, Any]  # EvalSettings, asdict
    eval_max_per_split: int
    utility_floor: float
    baseline_utility: float | None  # None: evaluate the base model first and send it (the original model's)
    pad_token_id: int
    feed: Any  # ray.util.queue.Queue of batch messages from the driver
    results: Any  # ray.util.queue.Queue of results to the driver
    dtype: str = "float32"
    max_length: int = 128
    history: list[dict[str, Any]] = field(default_factory=list)


def stream_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    import ray.train

    from orchestrator.evaluation import EvalSettings
    from orchestrator.models.loading import load_causal_lm
    from orchestrator.run.prepare import load_tokenizer

    job: StreamJob = config["job"]
    _quiet_ray_train_reports()
    from orchestrator.models.loading import quiet_progress_bars

    quiet_progress_bars()
    if job.train.get("threads"):
        torch.set_num_threads(job.train["threads"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cpu")
    if job.train.get("use_gpu"):
        import ray.train.torch

        device = ray.train.torch.get_device()
    started = time.perf_counter()
    model = load_causal_lm(job.base_dir, dtype=getattr(torch, job.dtype)).to(device)
    tokenizer = load_tokenizer(job.tokenizer_dir)
    settings = EvalSettings(**job.eval_settings)
    loaded = time.perf_counter() - started
    if rank == 0 and job.baseline_utility is None:
        from orchestrator.evaluation.forget_sets import utility_data, utility_metrics

        baseline = utility_metrics(model, tokenizer, utility_data(job.data, set(), job.eval_max_per_split),
                                   job.template, settings)
        job.results.put({"kind": "baseline", "utility": baseline})
        job.baseline_utility = baseline["model_utility"]  # the guard's reference (rank 0 decides for all)
    applied = 0
    while True:
        message = next_message(job.feed, rank, world_size)
        if message["kind"] == "idle":
            continue
        if message["kind"] == "stop":
            break
        model, result = _apply_batch(job, model, tokenizer, settings, message, rank, world_size, device)
        applied += result["state"] == "applied"
        if rank == 0:
            job.results.put(result)
    return {"load_seconds": round(loaded, 3), "applied_batches": applied} if rank == 0 else None


def _apply_batch(job: StreamJob, model: torch.nn.Module, tokenizer, settings, message: dict[str, Any], rank: int,
                 world_size: int, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    from orchestrator.evaluation.forget_sets import forget_metrics, utility_data, utility_metrics

    t0 = time.perf_counter()
    current = [(r["seq"], r["examples"]) for r in message["requests"]]
    earlier = [(r["seq"], r["examples"]) for r in message["earlier"]]
    excluded = set(message["excluded_ids"])
    method = message["method"]
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    before = forget_metrics(model, tokenizer, current, job.template, settings) if rank == 0 else {}
    t1 = time.perf_counter()

    forget = [e for _, group in current for e in group]
    train = {**job.train, "lr": method["lr"], "epochs": method["epochs"], "max_failures": 0,
             "checkpoint_every_epochs": None, "early_stop": None}  # a request runs its epochs (stream_config)
    rows = request_rows(tokenizer, method["name"], method["hparams"], forget, job.data, excluded, job.template,
                        job.max_length)
    # progress "off": the stream's driver shows one line (and a live table) per request, not the request's epochs.
    train_job = TrainJob(target_dir=job.base_dir, method_name=method["name"], method_hparams=method["hparams"],
                         train=train, rows=rows, pad_token_id=job.pad_token_id, dtype=job.dtype, progress="off")
    torch.manual_seed(train["seed"])
    reference = None
    if methods.needs_reference(method["name"], method["hparams"]):
        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    worker = UnlearningWorker(train_job)
    worker.report_progress = False  # one report per batch, below
    error = None
    try:
        worker.build(model, reference)
        t2 = time.perf_counter()
        worker.train()
        model = worker._export_model(worker.engine.full_state_dict())  # LoRA / FILA adapters merged back
    except Exception as err:  # a method that cannot run on this request: roll back and go on
        error = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
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
            after = forget_metrics(model, tokenizer, current + earlier, job.template, settings)
            utility = utility_metrics(model, tokenizer, utility_data(job.data, excluded, job.eval_max_per_split),
                                      job.template, settings)
            floor = job.utility_floor * (job.baseline_utility or 0.0)
            value = utility.get("model_utility")
            if value is None or not math.isfinite(value) or value < floor:
                shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
                state, reason = "rolled_back", f"model utility {shown} below the floor {floor:.4f}"
    t4 = time.perf_counter()
    if world_size > 1:
        import torch.distributed as dist

        holder = [(state, reason)]
        dist.broadcast_object_list(holder, src=0)
        state, reason = holder[0]

    checkpoint_path = None
    metrics = {"batch": message["batch"], "applied": float(state == "applied"),
               "model_utility": utility.get("model_utility") if utility else None}
    if state == "applied":
        checkpoint_path = _report_checkpoint(model, message, metrics, rank)
    else:
        model.load_state_dict(snapshot)
        _report(metrics)
    t5 = time.perf_counter()
    timings = {"before_eval": t1 - t0, "build": t2 - t1, "train": t3 - t2, "evaluate": t4 - t3,
               "checkpoint": t5 - t4, "worker_total": t5 - t0}
    return model, {"kind": "result", "batch": message["batch"], "state": state, "reason": reason,
                   "checkpoint": checkpoint_path, "before": before, "after": after, "utility": utility,
                   "train": {"steps": worker.global_step, "losses": losses[-3:]},
                   "timings": {k: round(v, 4) for k, v in timings.items()}}


def _report(metrics: dict[str, Any], checkpoint_dir: str | None = None, name: str | None = None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def _report_checkpoint(model: torch.nn.Module, message: dict[str, Any], metrics: dict[str, Any],
                       rank: int) -> str | None:
    """Every rank reports; rank 0 with the new model (HF folder) and which batch made it. Returns its path."""
    import ray.train

    name = f"batch-{message['batch']:05d}"
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            model.save_pretrained(folder, safe_serialization=True)
            (Path(folder) / STATE_FILE).write_text(json.dumps(
                {"batch": message["batch"], "requests": [r["id"] for r in message["requests"]]}))
        _report(metrics, folder if rank == 0 else None, name)
    if rank != 0:
        return None
    checkpoint = ray.train.get_checkpoint()
    return checkpoint.path if checkpoint is not None else None


def request_rows(tokenizer, method: str, hparams: dict[str, Any], forget: list[Example], data: UnlearningData,
                 excluded: set[str], template: PromptTemplate, max_length: int) -> UnlearningRows:
    """The batch parts a method trains on, as `unlearn run` builds them (orchestrator/run/unlearning.py `_make_job`), for one
    request's forget examples; retained examples named by any request so far are not retained any more."""
    from orchestrator.data.tokenize import encode
    from orchestrator.run.prepare import encode_rows

    profile = methods.profile(method, hparams)
    retain = tuple(e for e in data.retain if e.id not in excluded)
    rows = UnlearningRows(forget=encode_rows(tokenizer, forget, template, max_length))
    if profile.uses_retain:
        rows.retain = encode_rows(tokenizer, retain, template, max_length, offset=1_000_000)
    if profile.uses_alternate:
        from orchestrator.data.refusals import idk_answer

        rows.alternate = [encode(tokenizer, e, i, template, max_length, answer=e.idk_answer or idk_answer(e.id))
                          for i, e in enumerate(forget)]
    if profile.uses_analogous:
        from orchestrator.data.analogous import nearest_retained

        neighbours = nearest_retained(tuple(forget), retain)
        rows.analogous = [encode(tokenizer, retain[j], 2_000_000 + j, template, max_length) for j in neighbours]
        rows.__post_init__()
    return rows
