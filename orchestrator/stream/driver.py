"""`run_stream(config)`: replay a stream of forget requests on one resident model per method, exactly once each.

Per method (`stream.methods`, else the experiment's method) the stream has its own folder `<output>/<method>/`
with its ledger (`ledger.py`) and its checkpoints (`checkpoints/batch-NNNNN`, one per applied batch). The methods'
streams run one after another on one resident worker group (`orchestrator/run/resident.py`, the same group type
that serves `unlearn run` and sweep slots): each loads its latest model there and sends it batch after batch
(`orchestrator/stream/method_stream.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from orchestrator.config import ExperimentConfig
from orchestrator.errors import ConfigError
from orchestrator.stream.config import StreamConfig, StreamMethod
from orchestrator.observe.progress import Progress, progress_mode
from orchestrator.stream.requests import ContentHasher

if TYPE_CHECKING:
    from orchestrator.data.schema import UnlearningData

LOCK_FILE = "stream.lock"  # held by the process writing to the stream's folder (`single_writer`)


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


def run_stream(config: ExperimentConfig, *, requests: str | None = None, follow: bool | None = None,
               progress: Progress = print) -> StreamResult:
    started = time.perf_counter()
    cfg = stream_config(config, requests, follow)
    if cfg.source == "file" and not Path(cfg.requests or "").is_file():
        raise ConfigError(f"stream.requests: no such file {cfg.requests!r}")
    stream_methods = cfg.methods or [StreamMethod(name=config.method.name, hparams=dict(config.method.hparams))]
    from orchestrator.run.checks import check_deepspeed, check_method_fits_model

    for method in stream_methods:
        method_config = config.with_overrides(**{"method.name": method.name, "method.hparams": dict(method.hparams)})
        check_method_fits_model(method_config)
        check_deepspeed(method_config)
        check_sharded_stream(method_config)
    data = check_stream_attacks(config, cfg)
    output = stream_output_dir(config).resolve()
    output.mkdir(parents=True, exist_ok=True)
    with single_writer(output):
        return _run_locked(config, cfg, stream_methods, output, started, progress, data)


def check_sharded_stream(config: ExperimentConfig) -> None:
    """Refuse, in one line, what a stream under `train.deepspeed` cannot do: its engine is built once over the
    resident model and kept, so no adapters can be laid over that model per request (`train.lora`, FILA), and a
    method that keeps a whole frozen copy of the model before each request (ICU, RMU) would hold a second,
    unsharded model where each request's reference values are computed at its start instead."""
    if not config.train.deepspeed:
        return
    import methods

    name, hparams = config.method.name, config.method.hparams
    if config.train.lora is not None or methods.profile(name, hparams).adapters is not None:
        raise ConfigError(f"unlearn stream under train.deepspeed keeps one engine over the model, and adapters "
                          f"({'train.lora' if config.train.lora is not None else name}) would be laid over it per "
                          "request: drop train.deepspeed (LoRA streams run on plain engines) or the adapters")
    if methods.needs_reference(name, hparams) and methods.method_class(name).keeps_reference:
        raise ConfigError(f"method {name!r} keeps a frozen copy of the model before each request, which a stream "
                          "under train.deepspeed does not hold (only per-example reference values, computed at the "
                          "request's start): drop train.deepspeed, or use another method")


def check_stream_attacks(config: ExperimentConfig, cfg: StreamConfig) -> "UnlearningData | None":
    """With `stream.attack_every`, refuse in one line, before Ray starts, attacks that cannot run on this model or
    data (`check_attacks`, on the attacks the stream would run); the data it loaded for that, for `prepare`."""
    if cfg.attack_every is None:
        return None
    from orchestrator.run.checks import check_attacks
    from orchestrator.run.prepare import load_data, with_default_attacks

    data = load_data(config.data)
    try:
        # Rank 0 attacks its whole copy of the model, under ZeRO-3 too: `unlearn run`'s ZeRO-3 refusal is not
        # a stream's.
        check_attacks(with_default_attacks(config.with_overrides(**{"train.deepspeed": None})), data)
    except ConfigError as err:
        raise ConfigError(f"stream.attack_every: {err}") from None
    return data


@contextlib.contextmanager
def single_writer(output: Path) -> Iterator[None]:
    """Hold the stream folder's lock while the stream runs: a second `unlearn stream` on the same folder is refused
    in one line (two writers would requeue and apply each other's requests twice). The lock is the kernel's (an
    `flock` on `stream.lock`), so it goes with its process, however that process ends."""
    handle = open(output / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"another `unlearn stream` is writing to {output} ({holder}); one writer at a time: "
                              "wait for it, or use another --output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def concurrent_groups(methods: int, shape: Any, resources: dict[str, float]) -> int:
    """How many methods run at once, each on its own worker group of `shape` (a `WorkerSettings`): as many as the
    cluster's CPUs (and GPUs) hold, at least 1 (a small machine queues them)."""
    fit = int(resources.get("CPU", 0) // max(1, shape.workers * shape.cpus_per_worker))
    if shape.use_gpu:
        fit = min(fit, int(resources.get("GPU", 0) // shape.workers))
    return max(1, min(methods, fit))


def _run_locked(config: ExperimentConfig, cfg: StreamConfig, stream_methods: list[StreamMethod], output: Path,
                started: float, progress: Progress, data: "UnlearningData | None" = None) -> StreamResult:
    from orchestrator.models.loading import load_tokenizer
    from orchestrator.run.checks import check_resources
    from orchestrator.run.job import worker_settings
    from orchestrator.run.prepare import prepare
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.resident import ResidentWorkers
    from orchestrator.stream.method_stream import MethodStream

    connect_ray(config.ray.address, config.ray.num_cpus, progress)
    check_resources(config)
    # Without eval.attacks: `prepare` would relearn the retain model as the control of `unlearn run`'s relearning
    # attack, which a stream does not report (its recovery is per request, against each request's own before).
    shape = worker_settings(config)  # before a baseline task runs: Ray's free-CPU count lags a finished task
    prepared = prepare(config.model_copy(update={"eval": config.eval.model_copy(update={"attacks": None})}),
                       progress=progress, data=data, cpus_per_worker=shape.cpus_per_worker)
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    import ray

    groups = concurrent_groups(len(stream_methods), shape, ray.cluster_resources())
    if groups > 1:
        progress(f"{groups} methods at a time, each on its own worker group "
                 f"({shape.workers} x {shape.cpus_per_worker} CPU(s){', GPU' if shape.use_gpu else ''})")
    ContentHasher.of_folder(output)  # the stream folder's key, made once before the methods run side by side
    mode = "lines" if groups > 1 and progress_mode() == "bars" else None  # one live table at a time
    with contextlib.ExitStack() as stack:
        pool: queue.Queue = queue.Queue()
        for _ in range(groups):
            pool.put(stack.enter_context(ResidentWorkers(shape.workers, shape.cpus_per_worker, shape.use_gpu,
                                                         progress=progress, storage_root=output / "ray")))

        def run_method(method: StreamMethod) -> None:
            workers = pool.get()
            try:
                MethodStream(config, cfg, method, prepared, tokenizer, output / method.name, workers, progress,
                             mode).run()
            finally:
                pool.put(workers)

        if groups == 1:
            for method in stream_methods:
                run_method(method)
        else:
            with ThreadPoolExecutor(max_workers=groups, thread_name_prefix="stream-method") as executor:
                for future in [executor.submit(run_method, m) for m in stream_methods]:
                    future.result()  # the first method's error, after the others have ended

    from orchestrator.stream.report import write_stream_report

    summary = write_stream_report(output, [m.name for m in stream_methods], cfg)
    return StreamResult(str(output), [m.name for m in stream_methods], str(output / "stream_summary.json"),
                        str(output / "stream_report.md"), round(time.perf_counter() - started, 2), summary)
