"""The figures of a long stream (`experiments/stream_stress.yaml`): is its cost per request flat, and how far does
each method's model drift?

Reads a finished stream's folder (`stream_summary.json` and each method's ledger), or runs the stream first
(`--run CONFIG`), and prints per method:
- its wall time (from the first request dispatched to the last one finished);
- p50 service time (dispatch to durable result) of the first `--window` requests against the last `--window`, and
  their ratio (about 1: flat; a stream that evaluated every earlier forget set after every request would grow);
- utility drift (model utility minus the original's) of the model standing after requests 10, 50, 100 and the
  last (a rolled-back request leaves the model before it);
- applied and rolled-back requests, the largest resurgence (a forget set's ROUGE-L rising after it was forgotten)
  and the mean forget ROUGE-L of the requests measured after the last batch.

    python benchmarks/stream_stress.py runs/stream_stress-stream [--window 50] [--json FILE]
    python benchmarks/stream_stress.py --run experiments/stream_stress.yaml [--output DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.stream.drift import percentile  # noqa: E402

CHECKPOINTS = (10, 50, 100)


def drift_after(summary: dict[str, Any], upto: int) -> float | None:
    """Drift of the model standing after request `upto` (by source order): the last applied batch at or before
    it, or the original model (0) when none was applied yet."""
    applied = [b for b in summary["batches"] if b["state"] == "applied"]
    drift = 0.0
    for batch, value in zip(applied, summary["drift"]):
        if max(batch["seqs"]) <= upto:
            drift = value
    return drift


def method_figures(summary: dict[str, Any], window: int) -> dict[str, Any]:
    requests = sorted((r for r in summary["requests"] if r["service_s"] is not None), key=lambda r: r["seq"])
    first, last = requests[:window], requests[-window:]
    p50_first = percentile([r["service_s"] for r in first], 50)
    p50_last = percentile([r["service_s"] for r in last], 50)
    dispatched = [b["timings"] for b in summary["batches"] if b["timings"]]
    final_rouge = [row[-1] for row in summary["matrix"]["rouge_l"] if row and row[-1] is not None]
    resurgent = [v for v in summary["resurgence_rouge_l"].values() if v is not None]
    count = len(requests)
    return {
        "requests": count, "applied": summary["counts"].get("applied", 0),
        "rolled_back": summary["counts"].get("rolled_back", 0),
        "service_s_total": round(sum(t["service"] for t in dispatched), 1),
        f"p50_service_s_first_{window}": p50_first, f"p50_service_s_last_{window}": p50_last,
        "p50_ratio_last_over_first": None if not p50_first else p50_last / p50_first,
        "drift_after": {k: drift_after(summary, k) for k in (*CHECKPOINTS, count) if k <= count},
        "utility_original": summary["baseline"].get("model_utility"),
        "resurgence_max": max(resurgent) if resurgent else None,
        "forget_rouge_l_final_mean": sum(final_rouge) / len(final_rouge) if final_rouge else None,
        "final_column_measured": len(final_rouge),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stream_dir", nargs="?", help="a finished stream's output folder")
    parser.add_argument("--run", metavar="CONFIG", help="run this stream config first")
    parser.add_argument("--output", help="with --run: the stream's output folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --run: overrides")
    parser.add_argument("--window", type=int, default=50, help="requests at each end compared (default 50)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    folder = Path(args.stream_dir) if args.stream_dir else None
    if args.run:
        import yaml

        from orchestrator.config import load_config
        from orchestrator.stream.driver import run_stream

        config = load_config(args.run)
        overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
        if args.output:
            overrides["output_dir"] = args.output
        config = config.with_overrides(**overrides) if overrides else config
        folder = Path(run_stream(config, progress=lambda m: print(m, file=sys.stderr)).output_dir)
    if folder is None:
        parser.error("give a stream folder or --run CONFIG")
    summary = json.loads((folder / "stream_summary.json").read_text())
    out = {name: method_figures(s, args.window) for name, s in summary["methods"].items()}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    w = args.window
    print(f"{'method':8} {'applied':>7} {'rolled':>6} {'service s':>9} {f'p50 1-{w}':>9} {f'p50 last {w}':>11} "
          f"{'ratio':>6}  drift after " + ", ".join(str(k) for k in CHECKPOINTS) + ", last"
          f"  {'max resurgence':>14} {'final forget ROUGE-L':>20}")
    for name, f in out.items():
        drift = ", ".join(f"{v:+.3f}" for v in f["drift_after"].values())
        ratio = f["p50_ratio_last_over_first"]
        print(f"{name:8} {f['applied']:>7} {f['rolled_back']:>6} {f['service_s_total']:>9.0f} "
              f"{f[f'p50_service_s_first_{w}']:>9.2f} {f[f'p50_service_s_last_{w}']:>11.2f} "
              f"{ratio if ratio is not None else float('nan'):>6.2f}  {drift}  "
              f"{f['resurgence_max'] if f['resurgence_max'] is not None else float('nan'):>14.3f} "
              f"{f['forget_rouge_l_final_mean'] if f['forget_rouge_l_final_mean'] is not None else float('nan'):>20.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
