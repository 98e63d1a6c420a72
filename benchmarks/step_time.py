"""Step time of every method against plain fine-tuning, on the embedded tiny model and real tokenised batches.

For each method at its default hyperparameters: the target model fine-tuned by the embedded default (cached by
`orchestrator.run.prepare.prepare`), the batch layout the Ray Train loop uses (`UnlearningBatches`: forget rows plus the
method's retain / "I don't know" / analogous rows), `method.training_step(model, batch, TorchStepEngine)` with
AdamW (SOUL: its SophiaG). Epoch 0 is timed as the *cold* epoch: methods with a frozen reference (NPO, UnDIAL, ...)
run its forward on every example once and cache the result. The *warm* steps come after, from the following epochs,
where the reference cache answers every row. After each warm step the same forget batch is given to a plain
fine-tuning step (token-mean NLL, AdamW) on a separate copy of the model: the baseline, interleaved so that the
ratio survives a machine whose load changes. Epoch-end hooks (ICU's refinement) are not timed.

    python benchmarks/step_time.py [--steps 20] [--methods npo,undial] [--batch-size 8] [--threads 1]

Columns: rows = rows forwarded per step (forget + the method's other parts); epoch0 / warm ms = mean step time of
epoch 0 / of the warm steps; forget tok/s = prompt-and-answer tokens of the forget rows per second (warm); NLL ms =
the baseline on the same forget batches; x NLL = median over the warm steps of method step / NLL step (pairs, so a
burst of load on a shared machine does not decide it); ref rows = rows the reference forward ran on in epoch 0 / in
the later steps (0 when log-probs are computed once per example); ref cold/warm ms = the warm steps' batches again,
each timed with an empty reference cache and then with the warm one, alternating; w/c = median of warm / cold.
"""

from __future__ import annotations

import argparse
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

LR = 1e-5  # the step's cost does not depend on it; small so that no method diverges within the timed steps


@dataclass
class Timing:
    method: str
    parts: tuple[str, ...]
    rows: int
    setup_s: float
    cold_ms: float
    warm_ms: float
    warm_median_ms: float
    forget_tokens_per_s: float
    nll_ms: float
    ratio: float  # median over warm steps of (method step / NLL step on the same batch)
    reference_rows_cold: int
    reference_rows_warm: int
    paired_cold_ms: float | None = None  # the same batches with an empty reference cache, interleaved with ...
    paired_warm_ms: float | None = None  # ... the warm cache
    paired_ratio: float | None = None  # median over those steps of warm / cold


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
    """Cold epoch, then `steps` warm steps each followed by an NLL step on the same forget batch."""
    torch.manual_seed(0)
    model = load_causal_lm(prepared.target_dir)
    reference = load_causal_lm(prepared.target_dir) if methods.needs_reference(name) else None
    method = methods.build(name, reference=reference)
    parts = ("forget",) + tuple(p for p, used in (("retain", method.uses_retain), ("alternate", method.uses_alternate),
                                                  ("analogous", method.uses_analogous)) if used)
    batches = UnlearningBatches(rows, batch_size, pad_id, parts=parts)
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

    def nll_step(forget: dict[str, torch.Tensor]) -> None:
        baseline_engine.backward(token_mean_nll(forward_logits(baseline, forget), forget["labels"]))
        baseline_engine.step()

    cache = method.reference_cache
    cold = [timed(lambda b=b: method.training_step(model, b, engine)) for b in batches.epoch(0)]
    misses_cold = cache.misses
    warm, nll, forget_tokens = [], [], 0
    for batch in islice(batches_from(batches, first_epoch=1), steps):
        warm.append(timed(lambda: method.training_step(model, batch, engine)))
        nll.append(timed(lambda: nll_step(batch["forget"])))
        forget_tokens += int(batch["forget"]["attention_mask"].sum())
    paired_cold, paired_warm, paired_ratio = paired_reference_timing(method, model, engine, batches, steps) \
        if misses_cold else (None, None, None)
    rows_per_step = batch_size * len(parts)
    return Timing(
        method=name, parts=parts, rows=rows_per_step, setup_s=setup_s,
        cold_ms=statistics.mean(cold), warm_ms=statistics.mean(warm), warm_median_ms=statistics.median(warm),
        forget_tokens_per_s=forget_tokens / (sum(warm) / 1000.0), nll_ms=statistics.mean(nll),
        ratio=statistics.median(w / n for w, n in zip(warm, nll)),
        reference_rows_cold=misses_cold, reference_rows_warm=cache.misses - misses_cold,
        paired_cold_ms=paired_cold, paired_warm_ms=paired_warm, paired_ratio=paired_ratio,
    )


def paired_reference_timing(method, model, engine, batches: UnlearningBatches,
                            steps: int) -> tuple[float, float, float]:
    """Mean step time on the same batches with an empty reference cache (the reference forward runs, as in the
    first epoch) and with the warm cache, alternating step by step so that a change in machine load hits both;
    and the median of the per-batch warm / cold ratios."""
    from methods.base import ReferenceCache

    warm_cache = method.reference_cache
    cold, warm = [], []
    for batch in islice(batches_from(batches, first_epoch=1), steps):
        method.reference_cache = ReferenceCache()
        cold.append(timed(lambda: method.training_step(model, batch, engine)))
        method.reference_cache = warm_cache
        warm.append(timed(lambda: method.training_step(model, batch, engine)))
    return statistics.mean(cold), statistics.mean(warm), statistics.median(w / c for w, c in zip(warm, cold))


def print_table(timings: list[Timing], steps: int, batch_size: int, forget_rows: int) -> None:
    print(f"\nstep time per method, tiny Llama (embedded default), batch {batch_size} forget rows, "
          f"{forget_rows} forget examples; mean of {steps} warm steps; torch threads {torch.get_num_threads()}\n")
    header = (f"{'method':9} {'parts':24} {'rows':>4} {'epoch0 ms':>9} {'warm ms':>8} {'median':>7} "
              f"{'forget tok/s':>12} {'NLL ms':>7} {'x NLL':>6} {'ref rows e0/later':>17} {'ref cold/warm ms':>17} "
              f"{'w/c':>5}")
    print(header)
    print("-" * len(header))
    for t in timings:
        ref = f"{t.reference_rows_cold}/{t.reference_rows_warm}" if t.reference_rows_cold else "-"
        paired = f"{t.paired_cold_ms:.1f}/{t.paired_warm_ms:.1f}" if t.paired_cold_ms else "-"
        paired_ratio = f"{t.paired_ratio:.2f}" if t.paired_ratio else "-"
        print(f"{t.method:9} {'+'.join(t.parts):24} {t.rows:4d} {t.cold_ms:9.1f} {t.warm_ms:8.1f} "
              f"{t.warm_median_ms:7.1f} {t.forget_tokens_per_s:12.0f} {t.nll_ms:7.1f} {t.ratio:6.2f} {ref:>17} "
              f"{paired:>17} {paired_ratio:>5}")
    setup = [f"{t.method} {t.setup_s:.2f} s" for t in timings if t.setup_s > 0.01]
    if setup:
        print(f"\nadapter set-up before the first step (not in the step times): {', '.join(setup)}")
    for t in timings:
        if t.paired_cold_ms:
            later = ("none later: each example's reference log-probs are computed once" if not t.reference_rows_warm
                     else f"{t.reference_rows_warm} later (rows drawn at random keep bringing examples not seen yet)")
            print(f"{t.method}: reference forward on {t.reference_rows_cold} rows in epoch 0, {later}; same batches "
                  f"with an empty cache {t.paired_cold_ms:.1f} ms/step vs warm {t.paired_warm_ms:.1f} ms/step "
                  f"(median warm/cold per batch {t.paired_ratio:.2f})")


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
