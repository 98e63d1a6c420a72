"""Sweep throughput: the sweep's wall time against the trials' own work divided by the concurrent slots.

    python benchmarks/sweep_throughput.py [CONFIG] [--output DIR]     # runs the sweep (default: the embedded one)
    python benchmarks/sweep_throughput.py --summary DIR/sweep_summary.json   # reads a finished sweep

Prints both sides of the measure, wall <= 1.25 x sum(train_loop + evaluate) / slots, where train_loop (the workers'
own clock, from the worker's start of set-up to the last step) and evaluate (the evaluation on the workers) are what
a trial must do, and slots is the number of trials that run at once. It then shows where the rest of a trial's
time goes (Ray Train's start: controller, worker process and its imports; export; the finish), averaged over trials,
and the gap between the wall time and the ideal that those per-trial costs and the last round's idle slot explain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PHASES = ("prepare", "ray_train_start", "train_loop", "evaluate", "export", "ray_train_finish")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="experiment YAML with a sweep: section (default: embedded)")
    parser.add_argument("--output", help="sweep folder (default: the config's)")
    parser.add_argument("--summary", help="read this sweep_summary.json instead of running a sweep")
    args = parser.parse_args(argv)
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
    else:
        from orchestrator.config import load_config, parse_config
        from orchestrator.sweep.config import DEFAULT_SWEEP_EXPERIMENT
        from orchestrator.sweep.driver import run_sweep

        config = load_config(args.config) if args.config else parse_config(DEFAULT_SWEEP_EXPERIMENT)
        if args.output:
            config = config.with_overrides(**{"sweep.output_dir": args.output})
        summary = run_sweep(config, progress=lambda m: print(m, file=sys.stderr)).summary
    print(report(summary))
    return 0


def report(summary: dict) -> str:
    timing = summary["timing"]
    done = [t for t in summary["trials"] if t["status"] == "complete"]
    slots, wall = timing["slots"], timing["wall_seconds_total"]
    work = timing["sum_train_loop_evaluate"]
    ideal = work / slots
    per_trial = sum(t["seconds"] for t in done)
    served = (f"resident slots, {timing['worker_groups']} Ray Train worker group(s)"
              if timing.get("trial_workers") == "resident" else "a TorchTrainer per trial")
    lines = [f"trials: {len(done)} complete, {slots} at a time, {timing['sessions']} session(s), on {served}",
             f"sweep wall time:                              {wall:8.1f} s",
             f"sum(train_loop + evaluate) / slots:           {ideal:8.1f} s   ({work:.1f} s / {slots})",
             f"wall / ideal:                                 {wall / ideal:8.3f}   (criterion: <= 1.25)",
             f"sum(trial run seconds) / slots:               {per_trial / slots:8.1f} s",
             "", "mean per trial (s):"]
    for phase in PHASES:
        values = [t["timings"].get(phase) for t in done if t["timings"].get(phase) is not None]
        if values:
            lines.append(f"  {phase:<18} {sum(values) / len(values):7.2f}")
    other = [t["seconds"] - sum(t["timings"].get(p) or 0 for p in PHASES) for t in done]
    tune_extra = [(t.get("tune_seconds") or t["seconds"]) - t["seconds"] for t in done]
    if other:
        lines.append(f"  {'rest of the run':<18} {sum(other) / len(other):7.2f}   (tokenizer, encoding, plan, report)")
        lines.append(f"  {'Tune around it':<18} {sum(tune_extra) / len(tune_extra):7.2f}   (trial actor, reports)")
    overhead = (per_trial - work) / slots
    lines += ["", f"per-trial overhead beyond train_loop + evaluate, / slots: {overhead:7.1f} s",
              f"left over (scheduling, idle slots at the end):             {wall - per_trial / slots:7.1f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
