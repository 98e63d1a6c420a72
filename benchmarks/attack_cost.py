"""What the recovery attacks cost: a warm `unlearn run` with `eval.attacks` against the same run without, side by side.

Runs the CLI as a user does (`unlearn run [CONFIG] --set eval.attacks={}` and without it), each in a fresh process
that starts its own Ray, alternating the two so that a machine's drift falls on both alike, after one warm-up run
of each (which fine-tunes or finds the tiny models and caches the retain model's relearning control). Prints the
wall time of every run, the medians, the ratio, and where the attack run's extra time went (the workers'
evaluation and attack timings from `summary.json`).

    python benchmarks/attack_cost.py [CONFIG] [--repeats 2] [--output runs/attack-cost] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(config: str | None, overrides: list[str], output: Path) -> tuple[float, dict]:
    """Wall seconds of one `unlearn run` in a fresh process, and its summary."""
    argv = [sys.executable, "-m", "orchestrator.cli", "run", *([config] if config else []), "--output", str(output)]
    for item in overrides:
        argv += ["--set", item]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "RAY_UNLEARN_PROGRESS": "off"})
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"unlearn run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1]}")
    return seconds, json.loads((output / "summary.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="experiment YAML (default: embedded default)")
    parser.add_argument("--repeats", type=int, default=2, help="measured runs of each kind, after one warm-up each")
    parser.add_argument("--output", default="runs/attack-cost")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    kinds = {"plain": list(args.set), "attacks": [*args.set, "eval.attacks={}"]}
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    last: dict[str, dict] = {}
    for round_ in range(args.repeats + 1):
        for kind, overrides in kinds.items():
            seconds, summary = run_once(args.config, overrides, Path(args.output) / f"{kind}-{round_}")
            label = "warm-up" if round_ == 0 else f"run {round_}"
            print(f"{kind:8} {label:8} {seconds:6.1f} s", flush=True)
            if round_:
                walls[kind].append(seconds)
                last[kind] = summary
    plain, attacked = statistics.median(walls["plain"]), statistics.median(walls["attacks"])
    print(f"\nmedian wall time: without attacks {plain:.1f} s, with attacks {attacked:.1f} s: "
          f"x{attacked / plain:.2f} (+{100 * (attacked / plain - 1):.0f}%)")
    attacks = last["attacks"].get("attacks") or {}
    spent = {name: entry["seconds"] for name, entry in attacks.items() if name != "worst"}
    print("attack seconds on the worker: " + ", ".join(f"{k} {v:.1f}" for k, v in spent.items())
          + f" (total {sum(spent.values()):.1f}); evaluation {last['attacks']['timings']['evaluate']:.1f} s with "
          f"attacks vs {last['plain']['timings']['evaluate']:.1f} s without")
    print(f"threads per worker: {last['plain']['settings']['threads_per_worker']}; CPUs: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
