"""Per-request latency of `unlearn stream`, and the share of it spent outside unlearning and evaluation.

Reads a finished (or running) stream's ledgers, or runs one first (`--run CONFIG`). For every batch the driver
records its service time (from the moment it was put on the feed until its result was back and durable in the
ledger) and the workers' own clocks: evaluation before the request, building the method/optimizer, training,
evaluation after, checkpoint + report. Outside = service - (build + train + both evaluations): the feed's round
trips, the checkpoint's save and Ray Train's report, the ledger. Queue wait (a request waiting behind others) is
reported apart: it depends on the arrival rate, not on the stream's overhead.

    python benchmarks/stream_latency.py runs/stream_default-stream
    python benchmarks/stream_latency.py --run experiments/stream_default.yaml [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.stream.drift import percentile  # noqa: E402
from orchestrator.stream.ledger import LEDGER_FILE, Ledger  # noqa: E402


def figures(folder: Path) -> dict:
    ledger = Ledger(folder / LEDGER_FILE)
    try:
        batches = [b for b in ledger.batches() if b["timings"]]
        requests = [r for r in ledger.requests() if r.metrics]
    finally:
        ledger.close()
    service = [b["timings"]["service"] for b in batches]
    outside = [b["timings"]["outside"] / b["timings"]["service"] for b in batches if b["timings"]["service"] > 0]
    parts = {k: sum(b["timings"][k] for b in batches) for k in ("before_eval", "build", "train", "evaluate",
                                                               "checkpoint")}
    return {"batches": len(batches), "p50_service_s": percentile(service, 50),
            "p90_service_s": percentile(service, 90), "max_service_s": max(service) if service else None,
            "p50_latency_s": percentile([r.metrics["latency_s"] for r in requests], 50),
            "p50_queue_s": percentile([r.metrics["queue_s"] for r in requests], 50),
            "outside_share_mean": sum(outside) / len(outside) if outside else None,
            "outside_share_max": max(outside) if outside else None,
            "seconds_by_part": {k: round(v, 2) for k, v in parts.items()},
            "outside_s_total": round(sum(b["timings"]["outside"] for b in batches), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stream_dir", nargs="?", help="a stream's output folder")
    parser.add_argument("--run", metavar="CONFIG", help="run this stream config first")
    parser.add_argument("--output", help="with --run: the stream's output folder")
    args = parser.parse_args()
    folder = Path(args.stream_dir) if args.stream_dir else None
    if args.run:
        from orchestrator.config import load_config
        from orchestrator.stream.driver import run_stream, stream_output_dir

        config = load_config(args.run)
        if args.output:
            config = config.with_overrides(output_dir=args.output)
        folder = Path(run_stream(config, progress=lambda m: print(m, file=sys.stderr)).output_dir)
    if folder is None:
        parser.error("give a stream folder or --run CONFIG")
    out = {}
    for method_dir in sorted(p.parent for p in folder.glob(f"*/{LEDGER_FILE}")):
        out[method_dir.name] = figures(method_dir)
    print(json.dumps(out, indent=2))
    for name, f in out.items():
        ok = (f["p50_service_s"] or 1e9) <= 20 and (f["outside_share_mean"] or 1) <= 0.2
        print(f"{name}: p50 service {f['p50_service_s']:.2f} s, outside share {f['outside_share_mean']:.1%} "
              f"({'within' if ok else 'NOT within'} p50 <= 20 s and outside <= 20%)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
