"""How much the embedded tiny target looks like a real fine-tuned LM, against the foundation's stand-in.

Prepares (from the cache where it can) the embedded target of a config and the same task's target built the
foundation's way (no pretraining, 20 epochs with label smoothing 0.1, tokenizer on the task's data), and prints for
each the realism figure `alt_mass_top10` (share of the non-target mass on the 10 likeliest alternatives, pooled over
the forget and retain answers), with forget / retain ROUGE-L, forget probability and the preparation time.

    python benchmarks/realism.py [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from orchestrator.config import load_config
from orchestrator.run.prepare import prepare

FOUNDATION = {"model.pretrain": None, "model.finetune.epochs": 20, "model.finetune.lr": 2e-3,
              "model.finetune.label_smoothing": 0.1}
COLUMNS = ("alt_mass_top10", "forget_rouge_l", "retain_rouge_l", "forget_probability", "model_utility")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="experiment YAML (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    base = load_config(args.config)
    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    if overrides:
        base = base.with_overrides(**overrides)
    rows = []
    for label, config in (("embedded (pretrained)", base), ("foundation's stand-in", base.with_overrides(**FOUNDATION))):
        started = time.perf_counter()
        prepared = prepare(config, progress=lambda m: print(m, file=sys.stderr))
        rows.append((label, prepared.target_report.summary, time.perf_counter() - started))
    print(f"{'target':24}" + "".join(f"{c:>20}" for c in COLUMNS) + f"{'prepare s':>11}")
    for label, summary, seconds in rows:
        cells = "".join(f"{summary[c]:20.3f}" if summary.get(c) is not None else f"{'-':>20}" for c in COLUMNS)
        print(f"{label:24}{cells}{seconds:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
