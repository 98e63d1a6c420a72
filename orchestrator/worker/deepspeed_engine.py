"""DeepSpeed behind one small object: the config filled from the train config, the step engine, checkpoints, export.

Shape after OpenRLHF's `openrlhf/utils/deepspeed/` (`get_train_ds_config` / `get_eval_ds_config` as pure functions,
one wrapper that creates, saves and loads engines). `deepspeed_config` is pure and testable; everything that imports
`deepspeed` runs inside a Ray Train worker, where torch.distributed is already up (gloo on CPU, NCCL on GPUs) and
DeepSpeed wraps that process group instead of starting its own.

Facts this file relies on (DeepSpeed 0.19):
- The optimizer is always a torch optimizer instance from the method (SOUL's SophiaG) or the loop (AdamW); ZeRO wraps
  it and hands it flat fp32 partitions, which Sophia's per-tensor state handles as well as AdamW's. ZeRO refuses
  optimizers outside its tested list unless `zero_allow_untested_optimizer` is set, and refuses client optimizers
  under ZeRO-Offload unless `zero_force_ds_cpu_optimizer` is false: both are set here (defaults a file may override).
- Without CUDA, DeepSpeed picks its CPU accelerator (run.py's `_fit` sets DS_ACCELERATOR=cpu in the workers' env to
  say so rather than let it guess and warn) and gloo when oneCCL is not installed; it needs LOCAL_RANK, which Ray
  Train sets. bf16 is enabled only where the device supports it, never on CPU.
- Forward passes must go through the engine (`engine(...)`): it registers the backward hooks ZeRO's reduction needs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from orchestrator.config import ConfigError

CHECKPOINT_TAG = "deepspeed"  # one fixed tag: each reported checkpoint folder holds exactly one DeepSpeed state

# "auto" values this module knows how to fill, by dotted key. Bucket sizes follow the HF Trainer's DeepSpeed
# integration (transformers/integrations/deepspeed.py): hidden^2, 0.9 hidden^2 and 10 hidden.
AUTO_KEYS = (
    "train_micro_batch_size_per_gpu",
    "train_batch_size",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)
_BUCKET_KEYS = {
    "reduce_bucket_size": lambda h: h * h,
    "allgather_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


# --- the config ---------------------------------------------------------------------------------------------------
def load_deepspeed_json(path: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read and check a DeepSpeed JSON file: its stage, its "auto" keys, no optimizer or scheduler of its own.

    `path` may also be the already-loaded JSON (the driver reads the file and ships the dict to the workers, whose
    working directory, or node, may not have it); it is checked again and copied. Raises ConfigError with one line
    naming the file and the problem.
    """
    if isinstance(path, dict):
        config, path = copy.deepcopy(path), "train.deepspeed"
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"train.deepspeed: no such file {str(path)!r}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, got {type(config).__name__}")
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict) or "stage" not in zero:
        raise ConfigError(f"{path}: missing key 'zero_optimization.stage' (0, 1, 2 or 3)")
    stage = zero["stage"]
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage = {stage!r}: must be 0, 1, 2 or 3")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigError(f"{path}: remove {section!r}: the {section} comes from the method and train.lr / "
                              "train.warmup_ratio")
    unknown = [key for key in _auto_keys(config) if key not in AUTO_KEYS]
    if unknown:
        raise ConfigError(f"{path}: cannot fill \"auto\" for {unknown[0]!r}; known: {', '.join(AUTO_KEYS)}")
    return config


def deepspeed_config(
    path: str | Path | dict[str, Any],
    train_cfg: dict[str, Any],
    world_size: int,
    bf16_available: bool,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config of `path` with every "auto" filled from the train config (`TrainConfig.model_dump()`).

    micro batch = train.batch_size (per worker), no gradient accumulation, clipping = train.max_grad_norm (0 = off),
    bf16 only where `bf16_available`, bucket sizes from `hidden_size` (DeepSpeed's defaults when unknown).
    """
    config = load_deepspeed_json(path)
    accumulation = config.get("gradient_accumulation_steps", 1)
    if accumulation == "auto":
        accumulation = config["gradient_accumulation_steps"] = 1
    micro = train_cfg["batch_size"]
    fills: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "train_batch_size": micro * accumulation * world_size,
        "gradient_clipping": float(train_cfg.get("max_grad_norm") or 0.0),
        "bf16.enabled": bool(bf16_available),
        "fp16.enabled": False,  # fp16 loss scaling is not wired in; bf16 or fp32 only
    }
    for key, value in fills.items():
        _fill(config, key, value)
    if "train_batch_size" not in config and isinstance(config.get("train_micro_batch_size_per_gpu"), int):
        config["train_batch_size"] = config["train_micro_batch_size_per_gpu"] * accumulation * world_size
    zero = config["zero_optimization"]
    for key, rule in _BUCKET_KEYS.items():
        if zero.get(key) == "auto":
            if hidden_size is None:
                del zero[key]  # DeepSpeed's own default
            else:
                zero[key] = rule(hidden_size)
    config.setdefault("zero_allow_untested_optimizer", True)  # SophiaG is a client optimizer outside ZeRO's list
    if "offload_optimizer" in zero:
        config.setdefault("zero_force_ds_cpu_optimizer", False)  # the method's optimizer, not DeepSpeedCPUAdam
    config.setdefault("steps_per_print", 10**9)  # progress is reported through Ray Train, not DeepSpeed's log
    return config


def eval_config(train_config: dict[str, Any]) -> dict[str, Any]:
    """An eval-only ZeRO config for a frozen model (OpenRLHF's `get_eval_ds_config`): same stage and precision,
    no optimizer, no offloading of optimizer state."""
    zero = {k: v for k, v in train_config["zero_optimization"].items() if k != "offload_optimizer"}
    keys = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps", "bf16",
            "steps_per_print")
    return {"zero_optimization": zero, **{k: train_config[k] for k in keys if k in train_config}}


def zero_stage(config: dict[str, Any]) -> int:
    return int(config["zero_optimization"]["stage"])


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _auto_keys(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "auto" else []


def _fill(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node.get(p)
        if not isinstance(node, dict):
            return
    if node.get(leaf) == "auto":
        node[leaf] = value


# --- the engine ---------------------------------------------------------------------------------------------------
class DeepSpeedStepEngine:
    """backward / step / save / load through `deepspeed.initialize`, with the surface of `TorchStepEngine`.

    `model` is what methods must call for forward passes (the DeepSpeed engine); `module` is the wrapped model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None,
        config: dict[str, Any],
    ) -> None:
        import deepspeed

        self.config = config
        self.stage = zero_stage(config)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )

    def restart(self, lr: float,
                scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None) -> None:
        """Start a new run over the weights as they stand (a stream's next request), as a new engine would: no
        optimizer state, the learning rate `lr`, a new schedule. The engine is kept rather than rebuilt, so ZeRO-3's
        partitions and hooks are laid over the module once.

        ZeRO hands its torch optimizer flat fp32 partitions and lets it create its state at the first step (AdamW's
        and SophiaG's moments and step count), so emptying that state is what a fresh engine starts from."""
        inner = self.optimizer.optimizer  # the torch optimizer ZeRO wraps (a schedule needs a torch optimizer)
        inner.state.clear()
        for group in inner.param_groups:
            group["lr"] = group["initial_lr"] = lr
        self.scheduler = scheduler(inner) if scheduler is not None else None
        self.engine.lr_scheduler = self.scheduler

    def refresh_master_weights(self) -> None:
        """Copy the module's (partitioned) weights into the optimizer's fp32 master partitions, after they were
        written from outside the optimizer (a rolled-back request); otherwise the next step would write the old
        master weights back."""
        self.optimizer.refresh_fp32_params()

    def close(self) -> None:
        """Take ZeRO's hooks off the module and free the engine's buffers (a worker process that builds another
        engine next: a resident group's next run)."""
        self.engine.destroy()

    @property
    def model(self) -> torch.nn.Module:
        return self.engine

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        """Gradient averaging across workers, clipping, optimizer and scheduler step, zero_grad: all DeepSpeed's."""
        self.engine.step()

    # --- checkpoints: every rank writes its own shard files into its folder; Ray Train merges the folders ------
    def save(self, folder: str | Path, rank: int) -> bool:
        """Every rank must call this; returns True: each rank wrote files to report."""
        self.engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG)
        return True

    def load(self, folder: str | Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=CHECKPOINT_TAG)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint under {folder}/{CHECKPOINT_TAG}")

    # --- export -------------------------------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The unpartitioned model state on rank 0 (None elsewhere); every rank must call it under ZeRO-3."""
        if self.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict() if dist.get_rank() == 0 else None

    def partition_numel(self) -> tuple[int, int]:
        """(parameters held by this worker, parameters in the model); equal unless ZeRO-3 partitions them."""
        local = total = 0
        for p in self.engine.module.parameters():
            if hasattr(p, "ds_tensor"):
                local += p.ds_tensor.numel()
                total += p.ds_numel
            else:
                local += p.numel()
                total += p.numel()
        return local, total


def sharded_reference(reference: torch.nn.Module, train_config: dict[str, Any]) -> torch.nn.Module:
    """The frozen reference/teacher as an eval-only DeepSpeed engine under ZeRO-3 (partitioned like the policy);
    under ZeRO-0/1/2 parameters are not partitioned anyway, so it stays a plain replicated module."""
    if zero_stage(train_config) != 3:
        return reference
    import deepspeed

    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=reference, config=eval_config(train_config))
    engine.eval()
    return engine


def collective_reference_cache(cache) -> None:
    """Make a method's `ReferenceCache` agree across workers on when to run the reference forward.

    Under ZeRO-3 the reference forward is a collective (each layer's parameters are all-gathered), so every worker
    must run it at the same calls. Each worker caches the rows it has seen, and its shard (and its random retain
    rows) differ, so one worker can hit its cache where another misses and the all-gather would hang. With this, a
    lookup is a hit only where it hits on every worker (one all-reduce of a flag); otherwise every worker recomputes
    the rows of the batch. SOUL shares its inner objective's cache object, so setting it once covers both.
    """
    cache.agree = _hit_on_every_worker


def _hit_on_every_worker(hit: bool, device: torch.device) -> bool:
    flag = torch.tensor([float(hit)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())
