"""Overhead of the run function: where the wall time of repeated `run_unlearning` calls goes.

Calls `run_unlearning` N times from one process, with one Ray started before the first call and kept for all of
them (as a sweep or a request stream does), each call into its own output folder. For each call it prints the wall
time, the train loop (the workers' unlearning steps, from their own clock), the evaluation of the unlearned model,
and the rest: the overhead (wall - train loop - evaluation: preparation from the cache, Ray Train's worker group,
model loading, checkpoints, the report), with its share of the wall time. The first call is cold (it may prepare
the target and retain models, and it is the first to import everything); the later ones are warm.

    python benchmarks/overhead.py [CONFIG] [--calls 3] [--output runs/overhead] [--set key=value] [--small]
                                  [--resident]

`--resident` serves every call from one resident Ray Train worker group (`orchestrator/run/resident.py`): the first
call starts it, the later ones find it running.

`--small` shrinks the problem (tiny model, 20 people, one epoch, small evaluation) so that the script itself can be
checked in seconds; its figures are dominated by overhead by construction and say nothing about the default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import ExperimentConfig, load_config
from orchestrator.run.unlearning import run_unlearning

SMALL = {
    "model.tiny.hidden_size": 32, "model.tiny.num_layers": 1, "model.tiny.num_heads": 2,
    "model.tiny.intermediate_size": 64, "model.tiny.vocab_size": 300, "model.finetune.epochs": 2, "model.pretrain": None,
    "data.synthetic.n_people": 10, "data.synthetic.questions_per_person": 2,
    "train.epochs": 1, "train.batch_size": 1, "eval.max_per_split": 4, "eval.max_new_tokens": 4,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="experiment YAML (default: the embedded default)")
    parser.add_argument("--calls", type=int, default=3, help="run_unlearning calls (the first is cold)")
    parser.add_argument("--output", default="runs/overhead", help="folder of the calls' output folders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--small", action="store_true", help="a tiny problem, to check the script quickly")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--resident", action="store_true",
                        help="serve every call from one resident Ray Train worker group (orchestrator/run/resident.py) "
                             "instead of a TorchTrainer per call")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    return args


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    overrides: dict[str, Any] = dict(SMALL) if args.small else {}
    overrides.update({k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)})
    config = load_config(args.config)
    return config.with_overrides(**overrides) if overrides else config


def split_wall(wall: float, timings: dict[str, float]) -> dict[str, float]:
    """One call's wall time as train loop + evaluation + overhead (the rest), with the overhead's share."""
    train_loop, evaluation = timings["train_loop"], timings["evaluate"]
    overhead = wall - train_loop - evaluation
    return {"wall_s": round(wall, 2), "train_loop_s": round(train_loop, 2), "evaluation_s": round(evaluation, 2),
            "overhead_s": round(overhead, 2), "overhead_ratio": round(overhead / wall, 3)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = build_config(args)
    from orchestrator.run.ray_session import connect_ray

    connect_ray(config.ray.address, config.ray.num_cpus, progress=lambda m: print(m, file=sys.stderr))
    workers = None
    if args.resident:
        from orchestrator.run.resident import ResidentWorkers

        workers = ResidentWorkers(config.train.workers, config.train.cpus_per_worker, config.train.use_gpu,
                                  progress=lambda m: print(m, file=sys.stderr))
    try:
        rows = _calls(args, config, workers)
    finally:
        if workers is not None:
            workers.close()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _calls(args: argparse.Namespace, config: ExperimentConfig, workers) -> list[dict[str, Any]]:
    rows = []
    print(f"mode: {'resident workers' if workers else 'a TorchTrainer per call'}")
    print(f"{'call':>4}  {'wall s':>7}  {'train loop s':>12}  {'evaluation s':>12}  {'overhead s':>10}  ratio")
    for call in range(args.calls):
        output = Path(args.output) / f"call-{call}"
        started = time.perf_counter()
        result = run_unlearning(config.with_overrides(output_dir=str(output)), workers=workers,
                                progress=lambda m: print(m, file=sys.stderr))
        row = {"call": call, **split_wall(time.perf_counter() - started, result.timings), "timings": result.timings}
        rows.append(row)
        print(f"{call:>4}  {row['wall_s']:>7.1f}  {row['train_loop_s']:>12.1f}  {row['evaluation_s']:>12.1f}  "
              f"{row['overhead_s']:>10.1f}  {row['overhead_ratio']:.1%}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
