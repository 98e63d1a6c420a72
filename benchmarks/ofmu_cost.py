"""Step cost of OFMU against gradient ascent: exact (double/triple backward), forget_only, and first-order
(hessian="finite_difference"), on one tiny Llama-architecture HF model and the same rows.

The paper (arXiv 2509.22483) reports OFMU at 2.9-4.2x a GA step; the exact mode here costs far more, because an inner
step differentiates through the cosine of two gradients (second derivatives), the exact outer step needs
Hess(Phi) grad Phi (third derivatives), and double backward forces eager attention. This script times, side by side:

    ga             methods.build("ga"), one forward + backward of the forget rows (the baseline of every ratio)
    ofmu_exact     hessian=exact, outer_hessian=exact (eager attention, third derivatives)
    ofmu_forget    hessian=exact, outer_hessian=forget_only (eager attention, second derivatives)
    ofmu_fd        hessian=finite_difference, outer_hessian=exact, central differences (SDPA attention kept)
    ofmu_fd_forget hessian=finite_difference, outer_hessian=forget_only
    ofmu_fd_fwd    hessian=finite_difference, outer_hessian=forget_only, fd_scheme=forward (the cheapest)

Every variant starts from a copy of the same randomly initialised model (the cost does not depend on the weights),
with its own AdamW `TorchStepEngine`, and is given the same forget and retain rows (`--length` tokens, 60% prompt,
half of the rows padded). The steps run round-robin (warm-up rounds first, untimed), so a change of load on a shared
machine hits every variant alike; the figures are medians over the timed rounds, and "x GA" is the median over the
rounds of (variant step / GA step in the same round). OFMU runs at its default hyperparameters (T = 5 inner steps,
beta 0.1) otherwise.

    python benchmarks/ofmu_cost.py [--small] [--repeats 7] [--warmup 2] [--threads N] [--variants ga,ofmu_fd]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

import methods
from methods.numerics import IGNORE_INDEX
from orchestrator.models.loading import tiny_llama_config
from orchestrator.worker.engine import TorchStepEngine

LR = 1e-5  # the step's cost does not depend on it
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "ga": ("ga", {}),
    "ofmu_exact": ("ofmu", {"hessian": "exact", "outer_hessian": "exact"}),
    "ofmu_forget": ("ofmu", {"hessian": "exact", "outer_hessian": "forget_only"}),
    "ofmu_fd": ("ofmu", {"hessian": "finite_difference", "outer_hessian": "exact"}),
    "ofmu_fd_forget": ("ofmu", {"hessian": "finite_difference", "outer_hessian": "forget_only"}),
    "ofmu_fd_fwd": ("ofmu", {"hessian": "finite_difference", "outer_hessian": "forget_only", "fd_scheme": "forward"}),
}
SIZES = {  # (vocab, hidden, layers, heads, batch rows per part, tokens per row)
    "default": (8192, 128, 4, 4, 8, 64),
    "small": (1024, 64, 2, 2, 4, 32),
}


@dataclass
class Problem:
    model: torch.nn.Module
    batch: dict[str, dict[str, torch.Tensor]]
    description: str


def rows(vocab: int, batch: int, length: int, seed: int, first_index: int) -> dict[str, torch.Tensor]:
    """One batch part: random tokens, the first 60% of each row a prompt (label -100), half of the rows padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    attention = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : int(0.6 * length)] = IGNORE_INDEX
    for row in range(batch // 2, batch):
        cut = length - 4 * (row - batch // 2 + 1)
        ids[row, cut:], attention[row, cut:], labels[row, cut:] = 0, 0, IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": attention, "labels": labels,
            "index": torch.arange(first_index, first_index + batch)}


def problem(size: str) -> Problem:
    """The tiny Llama (HF `LlamaForCausalLM`, SDPA attention) and its forget and retain rows."""
    from transformers import LlamaForCausalLM

    vocab, hidden, layers, heads, batch, length = SIZES[size]
    torch.manual_seed(0)
    config = tiny_llama_config(vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                               intermediate_size=4 * hidden, max_positions=length)
    model = LlamaForCausalLM(config)
    parts = {"forget": rows(vocab, batch, length, 1, 0), "retain": rows(vocab, batch, length, 2, 1_000_000)}
    n = sum(p.numel() for p in model.parameters())
    description = (f"Llama vocab {vocab}, hidden {hidden}, {layers} layers, {heads} heads ({n / 1e6:.2f} M parameters); "
                   f"{batch} forget + {batch} retain rows of {length} tokens")
    return Problem(model, parts, description)


class Runner:
    """One variant: its own copy of the model, method and engine."""

    def __init__(self, name: str, base: torch.nn.Module) -> None:
        method_name, hparams = VARIANTS[name]
        self.name = name
        self.model = copy.deepcopy(base)
        self.model.train()
        self.method = methods.build(method_name, **hparams)
        self.engine = TorchStepEngine(self.model, torch.optim.AdamW(self.model.parameters(), lr=LR), None, 1.0)

    def step(self, batch: dict[str, dict[str, torch.Tensor]]) -> float:
        """One training step; wall milliseconds."""
        part = batch if self.method.uses_retain else {"forget": batch["forget"]}
        started = time.perf_counter()
        self.method.training_step(self.model, part, self.engine)
        return (time.perf_counter() - started) * 1000.0

    @property
    def attention(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", "?"))


def measure(
    names: list[str], prob: Problem, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Round-robin: `warmup` untimed rounds, then `repeats` timed ones; each variant's step times (ms) and the
    attention implementation its model ended with (exact OFMU switches to eager)."""
    runners = [Runner(name, prob.model) for name in names]
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        for runner in runners:
            ms = runner.step(prob.batch)
            if round_ >= warmup:
                times[runner.name].append(ms)
        print(f"round {round_ + 1}/{warmup + repeats} done", file=sys.stderr, flush=True)
    return times, {r.name: r.attention for r in runners}


def print_table(times: dict[str, list[float]], attention: dict[str, str], prob: Problem, warmup: int,
                repeats: int) -> None:
    print(f"\nOFMU step cost against GA: {prob.description}")
    print(f"torch threads {torch.get_num_threads()}; {warmup} warm-up rounds, median of {repeats} timed rounds\n")
    header = f"{'variant':15} {'attention':9} {'median ms':>10} {'min ms':>8} {'x GA':>6}"
    print(header)
    print("-" * len(header))
    ga = times.get("ga")
    for name, ms in times.items():
        ratio = statistics.median(t / g for t, g in zip(ms, ga)) if ga else float("nan")
        print(f"{name:15} {attention[name]:9} {statistics.median(ms):10.1f} {min(ms):8.1f} {ratio:6.2f}")
    print("\npaper (arXiv 2509.22483): OFMU at 2.9-4.2x GA")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a smaller model and batch: under a minute on 2 cores")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7; --small 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; --small 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    repeats = args.repeats if args.repeats is not None else (3 if args.small else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 2)
    prob = problem("small" if args.small else "default")
    times, attention = measure(names, prob, warmup, repeats)
    print_table(times, attention, prob, warmup, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
