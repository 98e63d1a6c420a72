"""Side by side: our training loop against `transformers.Trainer`, same model, rows, batch and optimizer, N steps.

One run trains the same saved Llama model for N steps two ways and prints, for each, tokens per second, peak memory
and wall time, and the ratios ours / theirs:

- theirs: `transformers.Trainer` in this process, with a `compute_loss` that calls our method's loss
  (`methods.build(name).loss(model, {"forget": part})`), AdamW, the same constant learning rate, gradient clipping,
  `max_steps`, batch size, and the very same batches (our `UnlearningBatches`, epoch 0, fed in order); no
  evaluation, no saving, no logging. It trains first, before Ray starts, so that this process's peak memory is its.
- ours: `orchestrator.run.unlearning.run_unlearning(config)` with `model.name` pointing at the same saved folder,
  one Ray Train worker, one epoch whose forget set is exactly N batches, evaluation as small as the config allows.
  Its training-only figures come from `summary.json`'s `train.throughput` (the worker's own train-loop clock and
  its process's peak); its wall time is the whole call: Ray start, preparation, the target's evaluation before,
  the Ray Train worker group, model loading, the evaluation after and the export. Theirs' wall time is model loading
  plus the Trainer's construction and training.

Both sides run without DeepSpeed, one training process each (DeepSpeed under `Trainer` needs a launcher and an
accelerator; on CPU it does not run), with the same torch threads. Peak memory is the training process's peak
resident set on CPU (`ru_maxrss`), the peak CUDA allocation on a GPU (`orchestrator/worker/throughput.py`).

The rows are the embedded default's synthetic question-answer rows (realistic short QA lengths, up to
`data.max_length`), encoded with a small BPE tokenizer trained on them, saved beside the model; the model's own
vocabulary is the preset's (32k), so the embedding and the LM head have their real size.

    python benchmarks/side_by_side.py [--preset cpu|gpu7b|tiny] [--steps 4] [--batch-size 8] [--method ga]
                                      [--lr 1e-5] [--threads N] [--workdir DIR] [--json FILE]

`--preset cpu`: a ~58M-parameter Llama (hidden 512, 8 layers, 32k vocabulary), float32, CPU. `--preset gpu7b`: the
Llama-2-7B shape, bfloat16, one GPU (refused in one line without CUDA). `--preset tiny`: a check of the script itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "vocab_size": 1024,
             "dtype": "float32", "gpu": False},
    "cpu": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376, "vocab_size": 32000,
            "dtype": "float32", "gpu": False},
    "gpu7b": {"hidden_size": 4096, "num_layers": 32, "num_heads": 32, "intermediate_size": 11008,
              "vocab_size": 32000, "dtype": "bfloat16", "gpu": True},
}
TOKENIZER_VOCAB = 1024  # the BPE trained on the rows; the model's vocabulary is the preset's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps on each side")
    parser.add_argument("--batch-size", type=int, default=8, help="forget rows per step (one worker: the global batch)")
    parser.add_argument("--method", choices=("ga", "npo"), default="ga")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of each side (default: all CPUs)")
    parser.add_argument("--workdir", help="model, cache and output folder (default: a temporary one)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be >= 1")
    args.threads = args.threads or os.cpu_count() or 1
    return args


def data_shape(steps: int, batch_size: int) -> dict[str, Any]:
    """Synthetic data whose forget set (10% of the people, q questions each) is exactly steps * batch_size rows."""
    rows = steps * batch_size
    questions = next(q for q in range(8, 0, -1) if rows % q == 0)
    people = rows // questions  # the forget people
    return {"data.forget_fraction": 0.1, "data.synthetic.n_people": max(10, 10 * people),
            "data.synthetic.questions_per_person": questions}


def base_config(args: argparse.Namespace, model_dir: str | None = None, output: str | None = None):
    from orchestrator.config import parse_config

    preset = PRESETS[args.preset]
    config = parse_config({}, source="side_by_side")
    overrides = {
        **data_shape(args.steps, args.batch_size),
        "method.name": args.method, "train.epochs": 1, "train.lr": args.lr, "train.batch_size": args.batch_size,
        "train.warmup_ratio": 0.0, "train.weight_decay": 0.0, "train.max_grad_norm": 1.0, "train.workers": 1,
        "train.cpus_per_worker": args.threads, "train.use_gpu": preset["gpu"], "train.log_every": 10**6,
        "model.dtype": preset["dtype"], "model.pretrain": None,
        "eval.max_per_split": 1, "eval.batch_size": 1, "eval.max_new_tokens": 1, "eval.gradient_mia": False,
        "ray.num_cpus": args.threads,
    }
    if model_dir is not None:
        overrides["model.name"] = model_dir
    if output is not None:
        overrides["output_dir"] = output
    return config.with_overrides(**overrides)


def save_model(args: argparse.Namespace, folder: Path) -> int:
    """A random Llama of the preset's shape and a BPE tokenizer trained on the rows, saved in `folder`; its size."""
    from transformers import LlamaForCausalLM

    from orchestrator.data.tokenize import PromptTemplate
    from orchestrator.data.tokenizer import corpus_texts, train_tokenizer
    from orchestrator.models.loading import tiny_llama_config
    from orchestrator.run.prepare import load_data

    preset = PRESETS[args.preset]
    config = base_config(args)
    tokenizer = train_tokenizer(corpus_texts(load_data(config.data), PromptTemplate()),
                                vocab_size=min(TOKENIZER_VOCAB, preset["vocab_size"]))
    llama = tiny_llama_config(preset["vocab_size"], hidden_size=preset["hidden_size"],
                              num_layers=preset["num_layers"], num_heads=preset["num_heads"],
                              intermediate_size=preset["intermediate_size"],
                              max_positions=max(256, config.data.max_length), pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = getattr(torch, preset["dtype"])
    device = "cuda" if preset["gpu"] else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(llama).to(dtype)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    if preset["gpu"]:
        torch.cuda.empty_cache()
    return parameters


def batches(config, model_dir: str) -> tuple[list[dict[str, dict[str, torch.Tensor]]], int]:
    """Our worker's batches of epoch 0 (the same rows, order and padding as ours trains on), and their real tokens."""
    from orchestrator.data.tokenize import PromptTemplate
    from orchestrator.models.loading import load_tokenizer
    from orchestrator.run.job import method_rows
    from orchestrator.run.prepare import load_data
    from orchestrator.worker.batching import UnlearningBatches

    tokenizer = load_tokenizer(model_dir)
    data = load_data(config.data)
    rows = method_rows(tokenizer, config.method.name, config.method.hparams, data.forget, data.retain,
                       PromptTemplate(), config.data.max_length)
    import methods

    parts = ("forget", *(p for p in ("retain", "alternate", "analogous")
                         if getattr(methods.profile(config.method.name, config.method.hparams), f"uses_{p}")))
    out = list(UnlearningBatches(rows, config.train.batch_size, tokenizer.pad_token_id, seed=config.train.seed,
                                 parts=parts).epoch(0))
    tokens = sum(int(part["attention_mask"].sum()) for batch in out for part in batch.values())
    return out, tokens


def theirs(args: argparse.Namespace, config, model_dir: str, workdir: Path) -> dict[str, Any]:
    """`transformers.Trainer` in this process, our method's loss, the same batches; figures of its training."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import methods
    from orchestrator.models.loading import load_causal_lm
    from orchestrator.worker.throughput import peak_memory_bytes

    started = time.perf_counter()
    train_batches, tokens = batches(config, model_dir)
    if len(train_batches) != args.steps:
        raise RuntimeError(f"expected {args.steps} batches, the data gave {len(train_batches)}")
    dtype = getattr(torch, PRESETS[args.preset]["dtype"])
    model = load_causal_lm(model_dir, dtype)
    reference = load_causal_lm(model_dir, dtype).eval().requires_grad_(False) if args.method == "npo" else None
    device = torch.device("cuda" if PRESETS[args.preset]["gpu"] else "cpu")
    if reference is not None:
        reference.to(device)
    method = methods.build(args.method, reference=reference, **config.method.hparams)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            clock["begin"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

    class MethodTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _ = method.loss(model, inputs)
            return (loss, None) if return_outputs else loss

        def _get_train_sampler(self, *a, **k):  # our batches, in our order
            return SequentialSampler(self.train_dataset)

    training_args = TrainingArguments(
        output_dir=str(workdir / "theirs"), max_steps=args.steps, per_device_train_batch_size=1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, gradient_accumulation_steps=1,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, use_cpu=device.type == "cpu", seed=config.train.seed,
        bf16=False, fp16=False)  # both sides train the weights in the preset's dtype, no autocast
    trainer = MethodTrainer(model=model, args=training_args, train_dataset=train_batches,
                            data_collator=lambda items: items[0], callbacks=[Clock()])
    trainer.train()
    seconds = clock["end"] - clock["begin"]
    figures = {"tokens": tokens, "steps": args.steps, "train_seconds": round(seconds, 3),
               "tokens_per_second": round(tokens / seconds, 1), "peak_memory_bytes": peak_memory_bytes(device),
               "wall_seconds": round(time.perf_counter() - started, 2), "threads": torch.get_num_threads()}
    del trainer, model, reference, method
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return figures


def ours(args: argparse.Namespace, config, workdir: Path) -> dict[str, Any]:
    """`run_unlearning(config)`; the training figures from summary.json's train.throughput."""
    from orchestrator.run.unlearning import run_unlearning

    started = time.perf_counter()
    result = run_unlearning(config, progress=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.perf_counter() - started
    summary = json.loads((Path(result.output_dir) / "summary.json").read_text())
    throughput = summary["train"]["throughput"]
    if summary["train"]["steps"] != args.steps:
        raise RuntimeError(f"expected {args.steps} steps, ours took {summary['train']['steps']}")
    return {"tokens": throughput["tokens"], "steps": summary["train"]["steps"],
            "train_seconds": throughput["train_seconds"], "tokens_per_second": throughput["tokens_per_second"],
            "peak_memory_bytes": max(throughput["peak_memory_bytes_per_rank"]), "wall_seconds": round(wall, 2),
            "threads": summary["settings"]["threads_per_worker"], "timings": summary["timings"]}


def ratios(our: dict[str, Any], their: dict[str, Any]) -> dict[str, float]:
    return {key: round(our[key] / their[key], 3) for key in
            ("tokens_per_second", "peak_memory_bytes", "train_seconds", "wall_seconds") if their[key]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    if preset["gpu"] and not torch.cuda.is_available():
        print(f"side_by_side: --preset {args.preset} needs a CUDA GPU and torch sees none", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="side-by-side-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_UNLEARN_CACHE", str(workdir / "cache"))
    model_dir = workdir / "model"
    parameters = save_model(args, model_dir)
    config = base_config(args, str(model_dir), str(workdir / "ours"))
    print(f"preset {args.preset}: {parameters / 1e6:.1f}M parameters, vocabulary {preset['vocab_size']}, "
          f"{preset['dtype']}, method {args.method}, {args.steps} steps of {args.batch_size} rows, lr {args.lr}, "
          f"{args.threads} torch threads, no DeepSpeed", flush=True)
    their = theirs(args, config, str(model_dir), workdir)  # first: this process's peak memory is its training's
    our = ours(args, config, workdir)
    ratio = ratios(our, their)
    print(f"{'side':<7} {'tokens':>7} {'tokens/s':>10} {'peak MiB':>9} {'train s':>8} {'wall s':>8} {'threads':>7}")
    for name, row in (("theirs", their), ("ours", our)):
        print(f"{name:<7} {row['tokens']:>7} {row['tokens_per_second']:>10.1f} "
              f"{row['peak_memory_bytes'] / 2**20:>9.0f} {row['train_seconds']:>8.2f} {row['wall_seconds']:>8.1f} "
              f"{row['threads']:>7}")
    print(f"ours/theirs: tokens/s {ratio.get('tokens_per_second')}, peak memory {ratio.get('peak_memory_bytes')}, "
          f"train s {ratio.get('train_seconds')}, wall s {ratio.get('wall_seconds')}")
    timings = our["timings"]
    print(f"ours' wall time includes Ray start, preparation, the evaluations and the export: "
          f"prepare {timings['prepare']}s, train loop {timings['train_loop']}s, evaluate {timings['evaluate']}s, "
          f"worker setup {timings['worker_setup']}s, Ray Train start {timings['ray_train_start']}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "parameters": parameters, "theirs": their,
                                               "ours": our, "ratios": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
