"""Will it fit? Per-worker memory of an unlearning run, worked out from the config before any GPU is booked.

`plan_memory(config)` adds up, per Ray Train worker, the weights, gradients and optimizer states (partitioned as in
the ZeRO paper, Rajbhandari et al. 2020, Fig. 1: stage 1 splits the optimizer states over the workers, stage 2 also
the gradients, stage 3 also the parameters; CPU offload moves them to host memory), the frozen reference model of
the methods that need one, LoRA adapters (only they get gradients and optimizer states), the activations of one step
and the method's extra tensors, and compares the peak with the device's memory.

Byte counts per parameter (ZeRO paper, Sec. 3.1, K = 12 for mixed-precision Adam): weights and gradients in the
compute dtype, AdamW's two states (Sophia's m and h: also two) plus an fp32 master copy under mixed precision
(DeepSpeed bf16/fp16); plain PyTorch keeps the states in the parameters' dtype and has no master copy.
Activations per token and layer are counted from the tensors HF's Llama block saves for backward (fp32 RMSNorm
inputs, the q/k/v/o and MLP inputs, SDPA's q, k, v, out; Korthikanti et al. 2022 do the same for GPT), plus the
logits and the fp32 log-softmax the losses take of them. With gradient checkpointing (`train.gradient_checkpointing`)
only each block's input is kept and one block's activations at a time are rebuilt in backward: the step recomputes
about one extra forward in exchange for that activation memory (the logits are not checkpointed). Estimates, not
measurements: within ~15% of what PyTorch reports for the tensors, plus a margin for the allocator.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import methods
from methods import MethodProfile, profile
from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.models.shapes import ModelShape, resolve_shape

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GPU_DEFAULT_GIB = 80.0  # an A100/H100 80 GB
RUNTIME_OVERHEAD_GIB = {"gpu": 1.5, "cpu": 0.5}  # CUDA context + NCCL buffers / interpreter, torch and Ray worker
ALLOCATOR_MARGIN = 0.05  # caching-allocator fragmentation, as a share of the tensors
OPTIMIZER_STATES = {"adamw": "AdamW (m, v)", "sophia": "SophiaG (m, h)"}  # a method profile's optimizer, as shown


@dataclass(frozen=True)
class ZeroSettings:
    """What the memory plan reads from a DeepSpeed JSON."""

    stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    mixed_precision: str | None = None  # "bfloat16" / "float16" when DeepSpeed trains in it with fp32 master weights
    bucket_elements: float = 0.0  # reduce + all-gather (or stage-3 prefetch) buckets
    max_live_parameters: float = 1e9


@dataclass
class MemoryPlan:
    """Per-worker memory in GiB: the training step's breakdown, the other phases' peaks, and whether it fits."""

    model: str
    shape: ModelShape
    method: str
    workers: int
    zero_stage: int
    precision: str
    optimizer: str
    params: int
    trainable_params: int
    rows_per_step: int
    tokens_per_step: int
    breakdown: dict[str, float]  # the training step, on the device
    host: dict[str, float]  # offloaded or cached in host memory, per worker
    phases: dict[str, float]  # peak of each phase: load, adapters (FILA), step
    device_memory_gib: float
    workers_per_device: int
    total_gib: float
    fits: bool
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A plain-text report: settings, the step's parts, the phases and the verdict."""
        lines = [
            f"memory plan: {self.model} (shape from {self.shape.source}: {_count(self.params)} params, "
            f"{_count(self.trainable_params)} trainable), method {self.method}, {self.workers} worker(s)",
            f"  ZeRO stage {self.zero_stage}, {self.precision}, {self.optimizer}; per worker and step "
            f"{self.rows_per_step} rows, {self.tokens_per_step} tokens",
            "",
            f"  {'per worker':44s}{'device GiB':>12s}{'host GiB':>10s}",
        ]
        for name in dict.fromkeys([*self.breakdown, *self.host]):
            device, host = self.breakdown.get(name), self.host.get(name)
            lines.append(f"  {name:44s}{_gib(device):>12s}{_gib(host):>10s}".rstrip())
        for phase, peak in self.phases.items():
            lines.append(f"  {'peak: ' + phase:44s}{peak:12.2f}")
        share = f" x {self.workers_per_device} workers" if self.workers_per_device > 1 else ""
        lines.append(f"  {'device memory' + share:44s}{self.device_memory_gib:12.2f}")
        verdict = (f"fits: {self.total_gib:.1f} GiB per worker at peak, "
                   f"{100 * self.total_gib * self.workers_per_device / self.device_memory_gib:.0f}% of the device")
        lines += ["", verdict if self.fits else f"does not fit: {self.reason}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gib(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" if value >= 0.005 or value == 0 else "<0.01"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(n)


def read_deepspeed(path: str | os.PathLike | None, use_gpu: bool, hidden_size: int) -> ZeroSettings:
    """ZeRO stage, offload and precision of a DeepSpeed JSON, its "auto" values filled by the very function the
    training engine uses (`deepspeed_engine.deepspeed_config`): bf16 on GPU workers only, buckets from the hidden
    size. Errors are the engine's too."""
    if path is None:
        return ZeroSettings()
    from orchestrator.worker.deepspeed_engine import deepspeed_config

    ds = deepspeed_config(str(path), {"batch_size": 1, "max_grad_norm": None}, world_size=1,
                          bf16_available=use_gpu, hidden_size=hidden_size)
    zero = ds["zero_optimization"]
    stage = int(zero["stage"])
    mixed = ("bfloat16" if ds.get("bf16", {}).get("enabled") is True
             else "float16" if ds.get("fp16", {}).get("enabled") is True else None)
    gather = (float(zero.get("stage3_prefetch_bucket_size", 5e7)) if stage == 3
              else float(zero.get("allgather_bucket_size", 5e8)))
    return ZeroSettings(
        stage=stage,
        offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme"),
        offload_params=stage == 3 and zero.get("offload_param", {}).get("device", "none") in ("cpu", "nvme"),
        mixed_precision=mixed,
        bucket_elements=(float(zero.get("reduce_bucket_size", 5e8)) + gather) if stage else 0.0,
        max_live_parameters=float(zero.get("stage3_max_live_parameters", 1e9)),
    )


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int, checkpointing: bool,
                               attention_scores_seq: int | None = None) -> float:
    """Bytes kept for backward per token, over all blocks (see the module doc).

    Per block: two RMSNorms (fp32 input, normalised input, output: 4h + 2dh each), attention (q, out, o_proj input:
    3dh; k, v: 2d kv), the SwiGLU MLP (gate, SiLU, up, down input: 4dI); eager attention adds its heads x s scores
    (fp32 softmax + cast copy). With activation checkpointing only each block's input is kept, and one block's
    activations are live while it is recomputed.
    """
    h, d = shape.hidden_size, dtype_bytes
    block = 2 * (4 * h + 2 * d * h) + d * (3 * h + 2 * shape.kv_size) + 4 * d * shape.intermediate_size
    if attention_scores_seq:
        block += shape.num_heads * attention_scores_seq * (4 + d)
    if checkpointing:
        return shape.num_layers * d * h + block
    return shape.num_layers * block


def default_device_memory_gib(use_gpu: bool) -> float:
    """80 GiB for a GPU worker; the machine's RAM for a CPU worker."""
    if use_gpu:
        return GPU_DEFAULT_GIB
    try:
        import psutil

        return psutil.virtual_memory().total / GIB
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def plan_memory(
    config: ExperimentConfig,
    model_config: Any = None,
    device_memory_gib: float | None = None,
    *,
    activation_checkpointing: bool | None = None,
) -> MemoryPlan:
    """Per-worker memory of `config`'s run; `model_config` (a transformers config or ModelShape) skips the lookup.

    `activation_checkpointing`: whether the step's blocks recompute their activations in backward; default: the
    config's `train.gradient_checkpointing`."""
    shape = resolve_shape(config, model_config)
    if activation_checkpointing is None:
        activation_checkpointing = config.train.gradient_checkpointing
    method = profile(config.method.name, config.method.hparams)  # what the method needs, without building it
    train = config.train
    zero = read_deepspeed(train.deepspeed, train.use_gpu, shape.hidden_size)
    model_bytes = DTYPE_BYTES[config.model.dtype]
    # what weights, gradients and activations are kept in during the step: DeepSpeed casts to its half precision
    d = DTYPE_BYTES[zero.mixed_precision] if zero.mixed_precision else model_bytes
    notes: list[str] = []
    device, host, trainable = _state_memory(shape, method, config, zero, d, notes)
    rows = train.batch_size * len(method.parts)
    tokens = rows * config.data.max_length  # rows are padded to the batch's longest, at most max_length
    device.update(_step_tensors(shape, method, config, d, trainable, activation_checkpointing))
    if method.full_vocab_part is not None and method.needs_reference and _forget_rows(config):
        host["reference cache (fp16 per token)"] = \
            _forget_rows(config) * config.data.max_length / 2 * shape.vocab_size * 2
        notes.append("the reference cache holds a full-vocabulary fp16 row per answer token of every forget example "
                     "a worker sees (estimated at max_length/2 answer tokens)")

    runtime = RUNTIME_OVERHEAD_GIB["gpu" if train.use_gpu else "cpu"] * GIB
    step = sum(device.values())
    device["runtime + allocator margin"] = runtime + ALLOCATOR_MARGIN * step
    phases = {
        # train.py loads the target (and the reference) whole onto the device; the engine partitions them after
        "load (whole model" + (" + reference" if method.needs_reference else "") + ")":
            params_bytes(shape, model_bytes) * (2 if method.needs_reference else 1) + runtime,
    }
    if method.adapters is not None:
        # the Fisher pass runs before the worker puts the model in training mode, and HF checkpoints only there
        fisher, accumulators = _fila_phase(shape, config, model_bytes, checkpointing=False)
        phases["adapters (FILA Fisher pass)"] = fisher * (1 + ALLOCATOR_MARGIN) + runtime
        host["FILA Fisher accumulators (init)"] = accumulators
    phases["step"] = step + device["runtime + allocator margin"]

    to_gib = lambda parts: {k: v / GIB for k, v in parts.items()}  # noqa: E731
    breakdown, host_gib, phases = to_gib(device), to_gib(host), to_gib(phases)
    workers_per_device = train.workers if (not train.use_gpu and config.ray.address is None) else 1
    if not train.use_gpu:  # a CPU worker's host memory is its device memory
        phases = {k: v + sum(host_gib.values()) for k, v in phases.items()}
    if device_memory_gib is None:
        device_memory_gib = default_device_memory_gib(train.use_gpu)
    peak_phase = max(phases, key=phases.get)
    total, budget = phases[peak_phase], device_memory_gib / workers_per_device
    reason = None
    if train.deepspeed and not method.supports_deepspeed:
        reason = (f"method {method.name!r} does not run under DeepSpeed (it sets gradients or moves parameters by "
                  f"hand); drop train.deepspeed")
    elif total > budget:
        reason = _why(total, budget, peak_phase, breakdown, zero, train.use_gpu)
    if zero.offload_params or zero.offload_optimizer:
        notes.append(f"offloaded to host memory: {sum(host_gib.values()):.1f} GiB per worker (pinned)")
    return MemoryPlan(
        model=config.model.name, shape=shape, method=method.name, workers=train.workers, zero_stage=zero.stage,
        precision=(f"{zero.mixed_precision} mixed precision (fp32 master weights)" if zero.mixed_precision
                   else f"{config.model.dtype} weights and optimizer states"),
        optimizer=OPTIMIZER_STATES[method.optimizer], params=shape.total_params(), trainable_params=trainable,
        rows_per_step=rows, tokens_per_step=tokens, breakdown=breakdown, host=host_gib, phases=phases,
        device_memory_gib=device_memory_gib, workers_per_device=workers_per_device, total_gib=total,
        fits=reason is None, reason=reason, notes=notes,
    )


def params_bytes(shape: ModelShape, dtype_bytes: int) -> float:
    return float(shape.total_params() * dtype_bytes)


def _state_memory(shape: ModelShape, method: MethodProfile, config: ExperimentConfig, zero: ZeroSettings, d: int,
                  notes: list[str]) -> tuple[dict[str, float], dict[str, float], int]:
    """(device bytes, host bytes, trainable parameters) of weights, gradients, optimizer states and the reference,
    partitioned over the workers by ZeRO stage (1: optimizer states, 2: + gradients, 3: + parameters)."""
    train, n = config.train, config.train.workers
    mixed = zero.mixed_precision is not None
    params = shape.total_params()
    if method.adapters is not None:
        rank, targets = method.adapters.rank, method.adapters.target_modules
        adapters = shape.lora_params(rank, targets)
        if train.lora is not None:
            notes.append(f"{method.name} brings its own LoRA adapters (FILA, rank {rank}); train.lora is not used")
    elif train.lora is not None:
        adapters = shape.lora_params(train.lora.rank, train.lora.target_modules)
        if adapters == 0:
            raise ConfigError(f"train.lora.target_modules {train.lora.target_modules!r} matches no Linear of "
                              f"{shape.name} ({', '.join(shape.linear_shapes())})")
    else:
        adapters = 0
    trainable = adapters or params
    patterns = methods.validate_hyperparameters(config.method.name, config.method.hparams).trainable_patterns(
        shape.num_layers)
    if not adapters and patterns is not None:  # the method updates a few parameters only (RMU)
        trainable = shape.matching_params(patterns)
        notes.append(f"{method.name} updates {_count(trainable)} parameters ({', '.join(patterns)})")
    # peft keeps adapters in fp32 unless DeepSpeed casts the whole module to its half precision
    trainable_bytes = (d if mixed else 4) if adapters else d
    states = 2  # AdamW: m, v; SophiaG: m, h
    optimizer_bytes = states * 4 + 4 if mixed else states * trainable_bytes  # + the fp32 master copy

    def shard(count: float, partitioned: bool) -> float:
        return count / n if partitioned else count

    device: dict[str, float] = {}
    host: dict[str, float] = {}
    optimizer = "optimizer states" + (" + fp32 master" if mixed else "")
    weights = params_bytes(shape, d) + adapters * trainable_bytes
    (host if zero.offload_params else device)["weights" + (" (frozen base + adapters)" if adapters else "")] = \
        shard(weights, zero.stage >= 3)
    if zero.offload_optimizer:  # ZeRO-Offload: fp32 gradient partitions and the optimizer step live on the CPU
        host["gradients (fp32 partition)"] = shard(trainable * 4, zero.stage >= 2)
        host[optimizer] = shard(trainable * optimizer_bytes, True)
    else:
        device["gradients"] = shard(trainable * trainable_bytes, zero.stage >= 2)
        device[optimizer] = shard(trainable * optimizer_bytes, zero.stage >= 1)
    if method.needs_reference:  # an eval-only engine under ZeRO-3, partitioned like the policy
        (host if zero.offload_params else device)["reference model (frozen)"] = \
            shard(params_bytes(shape, d), zero.stage >= 3)
    if zero.stage:
        gathered = 0.0
        if zero.stage == 3:  # the block being computed, the next one prefetched, or the embedding / head
            largest = max(shape.embedding_params(), shape.layer_params())
            gathered = min(largest + shape.layer_params(), zero.max_live_parameters)
        device["ZeRO buffers (gathered params, buckets)"] = (gathered + zero.bucket_elements) * d
    return device, host, trainable


def _step_tensors(shape: ModelShape, method: MethodProfile, config: ExperimentConfig, d: int, trainable: int,
                  checkpointing: bool) -> dict[str, float]:
    """Bytes of one step's activations, logits and the method's own extra tensors."""
    train, length = config.train, config.data.max_length
    tokens = train.batch_size * len(method.parts) * length
    eager_seq = length if method.double_backward else None  # OFMU switches to eager attention
    passes = 3 if method.double_backward else 1  # double backward keeps the graph of the gradients too
    out = {
        "activations (" + "/".join(method.parts) + ")":
            passes * tokens * activation_bytes_per_token(shape, d, checkpointing, eager_seq),
        "logits + fp32 log-softmax": tokens * shape.vocab_size * (d + 8),
    }
    if method.full_vocab_part is not None:
        out[f"full-vocabulary targets ({method.full_vocab_part})"] = train.batch_size * length * shape.vocab_size * 8
    if method.double_backward:
        out["gradient tensors with graphs (OFMU)"] = 4 * trainable * d
    return out


def _fila_phase(shape: ModelShape, config: ExperimentConfig, model_bytes: int,
                checkpointing: bool) -> tuple[float, float]:
    """(device bytes, host bytes) of FILA's Fisher pass, which runs on the whole model before DeepSpeed partitions
    it: the weights, gradients of every adapted Linear, one forget batch; two fp32 accumulators on the CPU."""
    linear = shape.num_layers * sum(a * b for a, b in shape.linear_shapes().values())
    tokens = config.train.batch_size * config.data.max_length
    device = (params_bytes(shape, model_bytes) + linear * model_bytes
              + tokens * (activation_bytes_per_token(shape, model_bytes, checkpointing)
                          + shape.vocab_size * (model_bytes + 8)))
    return device, 2 * linear * 4.0


def _forget_rows(config: ExperimentConfig) -> int | None:
    """Forget examples of the configured data, where the size is known without reading the data."""
    data = config.data
    if data.source == "synthetic":
        people = max(1, round(data.synthetic.n_people * data.forget_fraction))
        return people * data.synthetic.questions_per_person
    if data.source == "tofu":
        return round(4000 * data.forget_fraction)  # TOFU: 200 authors x 20 QA pairs
    return None


def _why(total: float, budget: float, phase: str, breakdown: dict[str, float], zero: ZeroSettings,
         use_gpu: bool) -> str:
    """One line: how far over, the largest parts, and the change that helps most."""
    top = sorted(breakdown.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {gib:.1f}" for name, gib in top)
    state = sum(v for k, v in breakdown.items() if k.startswith(("weights", "gradients", "optimizer", "reference")))
    activation = sum(v for k, v in breakdown.items() if k.startswith(("activations", "logits", "full-vocab")))
    if phase.startswith("load"):
        hint = "each worker loads the whole model (and reference) onto its device before ZeRO partitions it " \
               "(orchestrator/worker/loop.py): a larger device is needed"
    elif phase.startswith("adapters"):
        hint = "FILA's Fisher pass runs on the whole model before partitioning: lower train.batch_size or " \
               "data.max_length"
    elif state >= activation and zero.stage < 3:
        hint = "shard weights, gradients and optimizer states with ZeRO-3 (cluster/deepspeed/zero3.json) " \
               "over more workers, or train LoRA adapters (train.lora)"
    elif state >= activation:
        hint = "add workers, or offload to CPU (cluster/deepspeed/zero3_offload.json)"
    else:
        hint = "lower train.batch_size or data.max_length"
    where = "GPU" if use_gpu else "worker's share of RAM"
    return (f"needs {total:.1f} GiB per worker ({phase}) but the {where} has {budget:.1f} GiB; "
            f"largest parts (GiB): {parts}; {hint}")
