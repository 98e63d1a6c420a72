"""Step time of every method against plain fine-tuning, on the embedded tiny model and real tokenised batches.

For each method at its default hyperparameters: the target model fine-tuned by the embedded default (cached by
`orchestrator.run.prepare.prepare`), the batch layout the Ray Train loop uses (`UnlearningBatches`: forget rows plus the
method's retain / "I don't know" / analogous rows), and the training loop's own path: the reference values a method
reads (NPO's log-probs, UnDIAL's teacher distribution, ...) computed once before the first step over every row the
timed steps draw (`orchestrator/worker/reference_values.py`, the model itself as the reference, which is then
released; ICU and RMU keep a frozen copy), then `method.training_step(model, batch, TorchStepEngine)` with AdamW
(SOUL: its SophiaG). Every step from the first is timed; no cache is warmed beforehand that a run would lack. After
each step the same rows (every part the method forwards) are given to a plain fine-tuning step (a token-mean NLL
per part, AdamW) on a separate copy of the model: the baseline, interleaved so that the ratio survives a machine whose load changes. Epoch-end hooks (ICU's
refinement) are not timed.

    python benchmarks/step_time.py [--steps 20] [--methods npo,undial] [--batch-size 8] [--threads 1]

Columns: rows = rows forwarded per step (forget + the method's other parts); ref s = the one-off reference values
before the first step (not in the step times; ref rows = how many rows it computed); step ms / median = the timed
steps; forget tok/s = prompt-and-answer tokens of the forget rows per second; NLL ms = the baseline on the same rows; x NLL = median over the steps of method step / NLL step (pairs, so a burst of load on a shared machine does
not decide it); misses = reference lookups the steps had to compute (0: every one hit).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import torch

import methods
from methods import Batch
from methods.numerics import forward_logits, token_mean_nll
from orchestrator.worker.batching import ROW_ID_BASE, UnlearningBatches, UnlearningRows
from orchestrator.config import parse_config
from orchestrator.worker.engine import TorchStepEngine
from orchestrator.models.loading import load_causal_lm
from orchestrator.models.loading import load_tokenizer
from orchestrator.run.job import encode_part
from orchestrator.run.prepare import Prepared, prepare
from orchestrator.worker.reference_values import settle_reference

LR = 1e-5  # the step's cost does not depend on it; small so that no method diverges within the timed steps


@dataclass
class Timing:
    method: str
    parts: tuple[str, ...]
    rows: int
    setup_s: float  # adapters (FILA) before the first step
    reference_s: float  # the reference values, once, before the first step
    reference_rows: int
    step_ms: float
    step_median_ms: float
    forget_tokens_per_s: float
    nll_ms: float
    ratio: float  # median over the steps of (method step / NLL step on the same batch)
    misses: int  # reference lookups the timed steps computed


def build_rows(prepared: Prepared, tokenizer, max_length: int) -> UnlearningRows:
    """Every batch part the methods use, tokenised as `orchestrator.run.job` numbers them."""
    from orchestrator.data.analogous import nearest_retained
    from orchestrator.data.tokenize import encode

    data, template = prepared.data, prepared.template
    rows = UnlearningRows(forget=encode_part(tokenizer, data.forget, "forget", template, max_length))
    rows.retain = encode_part(tokenizer, data.retain, "retain", template, max_length)
    rows.alternate = [encode(tokenizer, e, i, template, max_length, answer=e.idk_answer)
                      for i, e in enumerate(data.forget)]
    neighbours = nearest_retained(data.forget, data.retain)
    rows.analogous = [encode(tokenizer, data.retain[j], ROW_ID_BASE["analogous"] + j, template, max_length)
                     for j in neighbours]
    return rows


def batches_from(batches: UnlearningBatches, first_epoch: int) -> Iterator[Batch]:
    epoch = first_epoch
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000.0


def measure(name: str, prepared: Prepared, rows: UnlearningRows, pad_id: int, batch_size: int, steps: int) -> Timing:
    """`steps` steps from the first (after the run's one-off reference values), each followed by an NLL step on the
    same rows."""
    torch.manual_seed(0)
    model = load_causal_lm(prepared.target_dir)
    method = methods.build(name, reference=model if methods.needs_reference(name) else None)
    parts = ("forget",) + tuple(p for p, used in (("retain", method.uses_retain), ("alternate", method.uses_alternate),
                                                  ("analogous", method.uses_analogous)) if used)
    batches = UnlearningBatches(rows, batch_size, pad_id, parts=parts)
    started = time.perf_counter()
    stats = settle_reference(method, model, batches, math.ceil(steps / batches.steps_per_epoch()), lambda p: p, 0,
                             None)
    reference_s = time.perf_counter() - started
    model.requires_grad_(True)  # frozen as the reference, as in the loop
    started = time.perf_counter()
    model = method.init_adapters(model, (b["forget"] for b in batches.epoch(0)),
                                 (b["retain"] for b in batches.epoch(0) if "retain" in b))
    setup_s = time.perf_counter() - started
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = method.make_optimizer(trainable, LR, 0.0) or torch.optim.AdamW(trainable, lr=LR)
    engine = TorchStepEngine(model, optimizer, None, max_grad_norm=1.0)

    baseline = load_causal_lm(prepared.target_dir)
    baseline.train()
    baseline_engine = TorchStepEngine(baseline, torch.optim.AdamW(baseline.parameters(), lr=LR), None, 1.0)

    def nll_step(batch: Batch) -> None:  # the same rows: one token-mean NLL per part the method forwards
        baseline_engine.backward(sum(token_mean_nll(forward_logits(baseline, part), part["labels"])
                                     for part in batch.values()))
        baseline_engine.step()

    timed_steps, nll, forget_tokens = [], [], 0
    for batch in islice(batches_from(batches, first_epoch=0), steps):
        timed_steps.append(timed(lambda: method.training_step(model, batch, engine)))
        nll.append(timed(lambda: nll_step(batch)))
        forget_tokens += int(batch["forget"]["attention_mask"].sum())
    return Timing(
        method=name, parts=parts, rows=batch_size * len(parts), setup_s=setup_s, reference_s=reference_s,
        reference_rows=stats.precomputed_rows, step_ms=statistics.mean(timed_steps),
        step_median_ms=statistics.median(timed_steps),
        forget_tokens_per_s=forget_tokens / (sum(timed_steps) / 1000.0), nll_ms=statistics.mean(nll),
        ratio=statistics.median(w / n for w, n in zip(timed_steps, nll)), misses=method.reference_cache.misses,
    )


def print_table(timings: list[Timing], steps: int, batch_size: int, forget_rows: int) -> None:
    print(f"\nstep time per method, tiny Llama (embedded default), batch {batch_size} forget rows, "
          f"{forget_rows} forget examples; mean of {steps} steps from the first; torch threads "
          f"{torch.get_num_threads()}\n")
    header = (f"{'method':9} {'parts':24} {'rows':>4} {'ref s':>6} {'ref rows':>8} {'step ms':>8} {'median':>7} "
              f"{'forget tok/s':>12} {'NLL ms':>7} {'x NLL':>6} {'misses':>6}")
    print(header)
    print("-" * len(header))
    for t in timings:
        ref = (f"{t.reference_s:6.2f} {t.reference_rows:8d}" if t.reference_rows else f"{'-':>6} {'-':>8}")
        print(f"{t.method:9} {'+'.join(t.parts):24} {t.rows:4d} {ref} {t.step_ms:8.1f} {t.step_median_ms:7.1f} "
              f"{t.forget_tokens_per_s:12.0f} {t.nll_ms:7.1f} {t.ratio:6.2f} {t.misses:6d}")
    setup = [f"{t.method} {t.setup_s:.2f} s" for t in timings if t.setup_s > 0.01]
    if setup:
        print(f"\nadapter set-up before the first step (not in the step times): {', '.join(setup)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="warm steps timed per method")
    parser.add_argument("--methods", default=",".join(methods.available_methods()), help="comma-separated names")
    parser.add_argument("--batch-size", type=int, default=8, help="forget rows per step (train.batch_size)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: tiny tensors gain nothing from more, and timings stay "
                        "stable on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for name in names:
        methods.method_class(name)  # unknown names fail before the preparation

    config = parse_config({})
    prepared = prepare(config, progress=lambda m: print(m, file=sys.stderr))
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    rows = build_rows(prepared, tokenizer, config.data.max_length)
    timings = []
    for name in names:
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        timings.append(measure(name, prepared, rows, tokenizer.pad_token_id, args.batch_size, args.steps))
    print_table(timings, args.steps, args.batch_size, len(rows.forget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
