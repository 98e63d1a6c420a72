"""One method's hyperparameter grid on shelves of fictitious books: forget one book, keep three, for every point.

For each shelf (the project's four books, `experiments/text_books.yaml`, and any others given by their seeds, which
`orchestrator/data/fictitious_books.py` writes into the output folder) and every grid point, it prints the forgotten
book's verbatim memorisation after / before and the kept books' after / before, and PASS where the issue-10 bar
holds (forget <= 0.5, kept >= 0.8). A second shelf is the check that a setting is not tuned to one corpus. One
resident Ray Train worker group serves every run (`orchestrator/run/resident.py`).

    python benchmarks/text_grid.py [--method undial] [--grid gamma=3,10,30] [--lr 1e-5,3e-5,1e-4]
                                   [--shelf 5,6,7,8] [--output runs/text-grid]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT / "experiments" / "text_books.yaml"
FORGET_AT_MOST, KEPT_AT_LEAST = 0.5, 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="undial")
    parser.add_argument("--grid", action="append", default=[], metavar="HPARAM=V1,V2",
                        help="a method hyperparameter and its values (repeatable; default: UnDIAL's gamma 3,10,30)")
    parser.add_argument("--lr", default="1e-5,3e-5,1e-4", help="learning rates (comma-separated)")
    parser.add_argument("--shelf", action="append", default=[], metavar="S1,S2,S3,S4",
                        help="another shelf's four book seeds, the first forgotten (repeatable)")
    parser.add_argument("--output", default="runs/text-grid")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if not args.grid and args.method == "undial":
        args.grid = ["gamma=3,10,30"]
    args.space = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        if not key or not values:
            parser.error(f"--grid {item!r}: write HPARAM=V1,V2")
        args.space[key] = [yaml.safe_load(v) for v in values.split(",")]
    try:
        args.lrs = [float(v) for v in args.lr.split(",")]
    except ValueError:
        parser.error(f"--lr {args.lr!r}: comma-separated numbers")
    args.shelves = []
    for item in args.shelf:
        seeds = [int(s) for s in item.split(",")]
        if len(seeds) != 4 or len(set(seeds)) != 4:
            parser.error(f"--shelf {item!r}: four different book seeds")
        args.shelves.append(seeds)
    return args


def shelf_config(seeds: list[int], folder: Path) -> ExperimentConfig:
    """`experiments/text_books.yaml` on the books of `seeds` (written into `folder`), the first one forgotten."""
    from orchestrator.data.fictitious_books import write_books

    paths = [str(p) for p in write_books(folder, seeds)]
    name = "text-books-" + "-".join(map(str, seeds))
    return load_config(BOOKS).with_overrides(**{"name": name, "data.text.forget": paths[0],
                                                "data.text.retain": paths[1:]})


def ratios(before: dict[str, Any], after: dict[str, Any]) -> tuple[float, float]:
    """(forgotten book, kept books): verbatim memorisation after / before."""
    return (after["verbatim_memorisation"] / before["verbatim_memorisation"],
            after["retain_verbatim_memorisation"] / before["retain_verbatim_memorisation"])


def grid_configs(args: argparse.Namespace, shelves: list[ExperimentConfig]) -> list[tuple[str, ExperimentConfig]]:
    """(point, config) for every shelf and grid point; a bad value is a ConfigError here, before any run."""
    output, keys = Path(args.output), list(args.space)
    runs = []
    for shelf in shelves:
        for values in itertools.product(*(args.space[k] for k in keys)):
            hparams = dict(zip(keys, values))
            for lr in args.lrs:
                point = " ".join(f"{k}={v}" for k, v in hparams.items()) + f" lr={lr:g}"
                runs.append((point, shelf.with_overrides(**{
                    "method.name": args.method, "method.hparams": hparams, "train.lr": lr,
                    "output_dir": str(output / shelf.name / point.replace(" ", "_"))})))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from orchestrator.config import ConfigError

    output = Path(args.output)
    try:
        shelves = [load_config(BOOKS)] + [shelf_config(s, output / "books" / "-".join(map(str, s)))
                                          for s in args.shelves]
        runs = grid_configs(args, shelves)
    except ConfigError as err:
        print(f"text_grid: error: {err}", file=sys.stderr)
        return 2
    from orchestrator.run.ray_session import connect_ray
    from orchestrator.run.resident import ResidentWorkers
    from orchestrator.run.unlearning import run_unlearning

    quiet = lambda message: print(message, file=sys.stderr)  # noqa: E731
    connect_ray(shelves[0].ray.address, shelves[0].ray.num_cpus, progress=quiet)
    rows = []
    print(f"{'shelf':24} {'point':28} {'forget':>7} {'kept':>6}")
    with ResidentWorkers(shelves[0].train.workers, shelves[0].train.cpus_per_worker, progress=quiet) as workers:
        for point, config in runs:
            result = run_unlearning(config, workers=workers, progress=quiet)
            forget, kept = ratios(result.before, result.after)
            passed = forget <= FORGET_AT_MOST and kept >= KEPT_AT_LEAST
            rows.append({"shelf": config.name, "point": point, "hparams": dict(config.method.hparams),
                         "lr": config.train.lr, "forget": round(forget, 3), "kept": round(kept, 3),
                         "pass": passed})
            print(f"{config.name:24} {point:28} {forget:7.3f} {kept:6.3f}  {'PASS' if passed else ''}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
