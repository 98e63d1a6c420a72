"""Unlearning throughput of a 7B-class Llama on GPUs: tokens/s, step time and model FLOPs utilisation (MFU).

The model is the Llama-2-7B architecture (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000) with
RANDOM weights: nothing is downloaded, and the cost of a step does not depend on the weights. The step is the
project's own: `methods.build("npo" | "ga").training_step(model, batch, engine)` with the plain engine
(`orchestrator.worker.engine.TorchStepEngine`, AdamW) or, with `--deepspeed`, the DeepSpeed engine of the training loop
(`orchestrator.worker.deepspeed_engine`, the JSON's "auto" values filled as the loop fills them). bf16 throughout; LoRA
adapters (peft) on every Linear but the head by default, `--full` trains every weight.

    python benchmarks/gpu_7b.py                                  # 1 GPU, NPO, LoRA r=16, 4 + 4 rows x 512 tokens
    python benchmarks/gpu_7b.py --method ga --full --deepspeed cluster/deepspeed/zero3.json
    torchrun --nproc-per-node 8 benchmarks/gpu_7b.py --full --deepspeed cluster/deepspeed/zero3.json
    python benchmarks/gpu_7b.py --dry-run                        # the set-up and the FLOPs formula, no GPU needed
    python benchmarks/gpu_7b.py --device cpu --tiny              # 2 steps of a tiny model: exercises the code path

FLOPs per step per GPU (model FLOPs: activation recomputation and attention scores are not counted), N = parameters
in matrix multiplies (every Linear including the head; the input embedding is a lookup):
  full fine-tune: 6 N per trained token (forward 2N, backward 4N: activation and weight gradients);
  LoRA:           4 N + 6 N_lora per trained token (forward 2N, activation gradients 2N through the frozen weights,
                  no weight gradients for them; the adapters' own forward, activation and weight gradients);
  reference:      2 N per forget token on steps where NPO's reference forward runs (cold cache; `--cold-reference`).
MFU = FLOPs per step / step time / peak bf16 FLOP/s of one GPU (`--peak-tflops`, default H100 SXM dense: 989).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=128, vocab_size=256, max_position_embeddings=256)
H100_SXM_BF16_DENSE_TFLOPS = 989.0


@dataclass
class StepFlops:
    """Model FLOPs of one step on one GPU, and the formula that produced them."""

    matmul_params: int
    lora_params: int
    trained_tokens: int
    reference_tokens: int
    total: float
    formula: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("npo", "ga"), default="npo", help="unlearning objective (default npo)")
    parser.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--batch-size", type=int, default=4, help="forget rows per step per GPU (NPO adds as many "
                        "retain rows)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row (default 512, TOFU's max_length)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CUDA kernels, reference cache)")
    parser.add_argument("--deepspeed", help="DeepSpeed JSON (e.g. cluster/deepspeed/zero3.json); default: plain torch")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--cold-reference", action="store_true",
                        help="new examples every step, so NPO's reference forward runs on every step")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_DENSE_TFLOPS,
                        help="peak dense bf16 TFLOP/s of one GPU (default: H100 SXM, 989)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama instead of 7B (code-path check)")
    parser.add_argument("--dry-run", action="store_true", help="print the set-up and FLOPs formula, run nothing")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.tiny:  # the code path, quickly: unless given, 2 steps, no warm-up, short rows
        given = set(argv if argv is not None else sys.argv[1:])
        args.steps = args.steps if "--steps" in given else 2
        args.warmup = args.warmup if "--warmup" in given else 0
        args.seq_len = args.seq_len if "--seq-len" in given else 32
        args.batch_size = args.batch_size if "--batch-size" in given else 2
    for name in ("lora_rank", "batch_size", "seq_len", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.peak_tflops <= 0:
        parser.error("--peak-tflops must be positive")
    return args


def llama_config(tiny: bool):
    from transformers import LlamaConfig

    return LlamaConfig(**(TINY if tiny else LLAMA2_7B), attn_implementation="sdpa", tie_word_embeddings=False)


def matmul_params(config) -> int:
    """Parameters in matrix multiplies: every Linear of the blocks plus the head (the embedding is a lookup)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i) + config.vocab_size * h


def lora_params(config, rank: int) -> int:
    """r * (in + out) for each of q, k, v, o, gate, up, down in every block (peft 'all-linear')."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = h // config.num_attention_heads * config.num_key_value_heads
    return layers * rank * (2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h))


def step_flops(config, args: argparse.Namespace, reference_rows: float) -> StepFlops:
    """Model FLOPs of one step on one GPU (the formulas of the module doc); `reference_rows`: forget rows per step
    the reference forward ran on (on average over the timed steps: 0 once NPO's cache is warm)."""
    n = matmul_params(config)
    rows = args.batch_size * (2 if args.method == "npo" else 1)  # NPO: forget + retain rows (alpha = 1)
    trained = rows * args.seq_len
    reference = round(reference_rows * args.seq_len)
    if args.full:
        n_lora, per_token, formula = 0, 6 * n, "6 N per trained token"
    else:
        n_lora = lora_params(config, args.lora_rank)
        per_token, formula = 4 * n + 6 * n_lora, "(4 N + 6 N_lora) per trained token"
    if reference:
        formula += " + 2 N per forget token (reference forward)"
    return StepFlops(n, n_lora, trained, reference, float(trained * per_token + 2 * n * reference), formula)


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): torchrun/deepspeed launchers set the env; a lone process is rank 0 of 1."""
    import torch.distributed as dist

    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", str(29500 + os.getpid() % 1000))):
        os.environ.setdefault(key, value)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device(device, local_rank) if device == "cuda" else \
        torch.device("cpu")


def make_batch(step: int, args: argparse.Namespace, vocab: int, device: torch.device, cold: bool) -> dict:
    """Random rows in the methods' layout; the same `index` always carries the same tokens (so caching is honest).
    Warm: 4 distinct batches cycle (the warm-up fills the reference cache). Cold: new examples every step."""
    block = step if cold else step % 4
    prompt = args.seq_len // 4

    def part(offset: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(offset + block)
        ids = torch.randint(3, vocab, (args.batch_size, args.seq_len), generator=g)
        labels = ids.clone()
        labels[:, :prompt] = -100
        index = torch.arange(block * args.batch_size, (block + 1) * args.batch_size) + offset
        return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                             "labels": labels, "index": index}.items()}

    batch = {"forget": part(0)}
    if args.method == "npo":
        batch["retain"] = part(1_000_000)
    return batch


def build(args: argparse.Namespace, config, device: torch.device, world_size: int):
    """(model to call, method, engine): random bf16 weights, LoRA unless --full, DeepSpeed when asked."""
    import methods
    from orchestrator.worker.engine import TorchStepEngine
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU: the code path, in fp32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    reference = copy.deepcopy(model) if args.method == "npo" else None  # the frozen original: same weights
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not args.full:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                 target_modules="all-linear", lora_dropout=0.0,
                                                 task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    if args.deepspeed:
        from orchestrator.worker.deepspeed_engine import (DeepSpeedStepEngine, collective_reference_cache,
                                                   deepspeed_config, sharded_reference)

        train_cfg = {"batch_size": args.batch_size, "max_grad_norm": 1.0}
        ds = deepspeed_config(args.deepspeed, train_cfg, world_size, bf16_available=device.type == "cuda",
                              hidden_size=config.hidden_size)
        if reference is not None:
            reference = sharded_reference(reference, ds)
        engine = DeepSpeedStepEngine(model, optimizer, None, ds)
        method = methods.build(args.method, reference=reference)
        if reference is not None and engine.stage == 3 and world_size > 1:
            collective_reference_cache(method.reference_cache)
        return engine.model, method, engine
    engine = TorchStepEngine(model, optimizer, None, max_grad_norm=1.0)
    return model, methods.build(args.method, reference=reference), engine


def planned_step_gib(args: argparse.Namespace, config, world_size: int, use_gpu: bool) -> float:
    """What `unlearn plan` predicts for this set-up's training step (GiB per GPU), to compare with the measurement."""
    from orchestrator.config import parse_config
    from orchestrator.models.plan import plan_memory

    experiment = parse_config({
        "model": {"name": "meta-llama/Llama-2-7b-hf", "dtype": "bfloat16" if use_gpu else "float32"},
        "data": {"max_length": args.seq_len},
        "method": {"name": args.method},
        "train": {"batch_size": args.batch_size, "workers": world_size, "use_gpu": use_gpu,
                  "deepspeed": args.deepspeed,
                  "lora": None if args.full else {"rank": args.lora_rank, "alpha": 2.0 * args.lora_rank}},
    })
    plan = plan_memory(experiment, model_config=config, device_memory_gib=1e9,
                       activation_checkpointing=args.gradient_checkpointing)
    return plan.phases["step"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then timed steps; every rank times its own steps, rank 0 reports the mean over ranks."""
    import torch.distributed as dist

    rank, world, device = setup_distributed(args.device)
    config = llama_config(args.tiny)
    model, method, engine = build(args, config, device, world)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, misses = [], 0
    for step in range(args.warmup + args.steps):
        batch = make_batch(step, args, config.vocab_size, device, args.cold_reference)
        if step == args.warmup:
            misses = method.reference_cache.misses
        synchronize(device)
        started = time.perf_counter()
        logs = method.training_step(model, batch, engine)
        synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    mean = torch.tensor([statistics.mean(times)], dtype=torch.float64, device=device)
    dist.all_reduce(mean)
    step_s = float(mean) / world
    flops = step_flops(config, args, reference_rows=(method.reference_cache.misses - misses) / args.steps)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "model": "tiny Llama" if args.tiny else "Llama-2-7B architecture, random weights",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpus": world, "method": args.method, "training": "full" if args.full else f"LoRA r={args.lora_rank}",
        "deepspeed": args.deepspeed, "gradient_checkpointing": args.gradient_checkpointing,
        "step_ms": 1000 * step_s, "tokens_per_s_per_gpu": flops.trained_tokens / step_s,
        "tokens_per_s": world * flops.trained_tokens / step_s,
        "model_tflops_per_gpu": flops.total / step_s / 1e12,
        "mfu": flops.total / step_s / (args.peak_tflops * 1e12), "peak_tflops": args.peak_tflops,
        "flops": asdict(flops), "peak_memory_gib": peak_gib, "last_loss": logs.get("loss"),
        "planned_step_gib": planned_step_gib(args, config, world, device.type == "cuda"),
    }
    return result if rank == 0 else {}


def describe(args: argparse.Namespace, flops: StepFlops) -> str:
    """The set-up and the FLOPs of one step: predicted (dry run) or measured (the reference rows that ran)."""
    return (f"{'tiny Llama' if args.tiny else 'Llama-2-7B architecture (random weights)'}: N = {flops.matmul_params:,} "
            f"matmul parameters" + ("" if args.full else f", N_lora = {flops.lora_params:,} (r={args.lora_rank})")
            + f"; method {args.method}, {args.batch_size} forget rows"
            + (f" + {args.batch_size} retain rows" if args.method == "npo" else "") + f" x {args.seq_len} tokens = "
            f"{flops.trained_tokens} trained tokens per step per GPU\nFLOPs per step per GPU = {flops.formula} = "
            f"{flops.total:.4g}")


def predicted_flops(args: argparse.Namespace) -> StepFlops:
    """A step's FLOPs before running: NPO's reference forward counts on every step only with --cold-reference."""
    runs = args.method == "npo" and args.cold_reference
    return step_flops(llama_config(args.tiny), args, reference_rows=args.batch_size if runs else 0)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(describe(args, StepFlops(**result["flops"])))
    memory = ""
    if result["peak_memory_gib"] is not None:
        memory = (f", peak memory allocated {result['peak_memory_gib']:.1f} GiB (unlearn plan's step estimate, "
                  f"runtime and margin included: {result['planned_step_gib']:.1f} GiB)")
    print(f"{result['device']} x {result['gpus']}, {result['training']}, "
          f"{'DeepSpeed ' + result['deepspeed'] if result['deepspeed'] else 'plain torch'}"
          f"{', gradient checkpointing' if result['gradient_checkpointing'] else ''}{memory}")
    print(f"step {result['step_ms']:.1f} ms (mean of {args.steps} after {args.warmup} warm-up), "
          f"{result['tokens_per_s_per_gpu']:.0f} tokens/s per GPU, {result['tokens_per_s']:.0f} in all")
    print(f"model FLOPs {result['model_tflops_per_gpu']:.3g} TFLOP/s per GPU = MFU {100 * result['mfu']:.1f}% of "
          f"{args.peak_tflops:g} TFLOP/s peak")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        print(describe(args, predicted_flops(args)))
        print(f"MFU = FLOPs per step / step time / ({args.peak_tflops:g} TFLOP/s)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_7b: no CUDA device found: this benchmark needs an NVIDIA GPU; run it on one, or check the code "
              "path on CPU with `--device cpu --tiny` (or `--dry-run` for the FLOPs formula)", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("gpu_7b: a 7B model on CPU is not a benchmark; add --tiny", file=sys.stderr)
        return 2
    result = run(args)
    if result:
        report(result, args)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
