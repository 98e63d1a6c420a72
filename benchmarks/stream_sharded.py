"""Do sharded and LoRA streams give the plain stream's answers? The same requests, streamed under each setting.

For each method, a requests file of `--requests` people (4 QA pairs each: every request's rows divide evenly
between 2 workers), the 5th destructive (the method at lr 50 for 3 epochs, which the guard must roll back), is
streamed with the small config of `benchmarks/stream_kills.py` under:
- plain-1w: 1 plain worker, batch 4;
- plain-2w: 2 plain workers, batch 2 each (the same global batches);
- zero2-2w, zero3-2w: 2 workers under `cluster/deepspeed/zero2.json` / `zero3.json`, batch 2 each;
- lora-1w: 1 plain worker with LoRA adapters (rank 8), batch 4.
It prints each stream's states (A applied, R rolled back) and the largest difference of every request's utility and
forget probability / ROUGE-L (before and after) from plain-2w and plain-1w. A sharded stream should equal plain-2w
to float32 rounding; it equals plain-1w too for a method that reads no retain rows, since each worker draws its own
retain sample (NPO and SOUL at their defaults do).

    python benchmarks/stream_sharded.py [--methods ga npo soul] [--requests 10] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOOM = 5  # the destructive request's position
SETTINGS: dict[str, dict[str, Any]] = {
    "plain-1w": {},
    "plain-2w": {"workers": 2, "batch_size": 2},
    "zero2-2w": {"workers": 2, "batch_size": 2, "deepspeed": str(ROOT / "cluster/deepspeed/zero2.json")},
    "zero3-2w": {"workers": 2, "batch_size": 2, "deepspeed": str(ROOT / "cluster/deepspeed/zero3.json")},
    "lora-1w": {"lora": {"rank": 8}},
}


def _kills():
    spec = importlib.util.spec_from_file_location("stream_kills", ROOT / "benchmarks" / "stream_kills.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_requests(path: Path, method: str, count: int) -> None:
    from orchestrator.data.synthetic import make_synthetic_data

    synthetic = _kills().CONFIG["data"]["synthetic"]
    data = make_synthetic_data(seed=0, n_people=synthetic["n_people"],
                               questions_per_person=synthetic["questions_per_person"])
    people = list(dict.fromkeys(e.id.split("/")[0] for e in data.forget + data.retain))[:count]
    lines = []
    for i, person in enumerate(people, start=1):
        line: dict[str, Any] = {"id": f"r{i}", "items": [person]}
        if i == BOOM:
            line["method"] = {"name": method, "lr": 50.0, "epochs": 3}
        lines.append(json.dumps(line))
    path.write_text("\n".join(lines) + "\n")


def stream(kills, workdir: Path, method: str, setting: str, requests: Path, env: dict[str, str]) -> list[dict]:
    config = kills.CONFIG
    raw = {**config, "name": f"sharded-{method}-{setting}", "train": {**config["train"], **SETTINGS[setting]},
           "stream": {**config["stream"], "methods": [{"name": method}], "requests": str(requests)}}
    path = workdir / f"{method}-{setting}.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = workdir / f"{method}-{setting}"
    wall = kills.run_to_end(path, out, env, workdir / f"{method}-{setting}.log")
    print(f"  {setting}: {wall:.0f} s", flush=True)
    return json.loads((out / "stream_summary.json").read_text())["methods"][method]["requests"]


def largest_difference(got: list[dict], want: list[dict]) -> float | None:
    """The largest |difference| over the requests both applied or measured alike; None if their states differ."""
    if [r["state"] for r in got] != [r["state"] for r in want]:
        return None
    worst = 0.0
    for a, b in zip(got, want):
        if a["state"] != "applied":
            continue
        worst = max(worst, abs(a["model_utility"] - b["model_utility"]))
        for side in ("forget_before", "forget_after"):
            for metric in ("probability", "rouge_l"):
                worst = max(worst, abs(a[side][metric] - b[side][metric]))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ga", "npo", "soul"])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--workdir", help="default: a temporary folder")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if not BOOM <= args.requests <= 20:
        parser.error(f"--requests must be {BOOM}..20 (the data set's people; the {BOOM}th is destructive)")
    kills = _kills()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stream-sharded-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = kills.environment(workdir / "cache")
    figures: dict[str, Any] = {}
    for method in args.methods:
        print(f"{method}: {args.requests} requests, the {BOOM}th destructive", flush=True)
        requests = workdir / f"{method}-requests.jsonl"
        write_requests(requests, method, args.requests)
        results = {s: stream(kills, workdir, method, s, requests, env) for s in args.settings}
        figures[method] = {}
        for setting, rows in results.items():
            states = "".join(r["state"][0].upper() for r in rows)
            against = {} if setting.startswith("lora") else {  # LoRA trains other weights: its own answers
                ref: largest_difference(rows, results[ref]) for ref in ("plain-2w", "plain-1w")
                if ref in results and ref != setting}
            figures[method][setting] = {"states": states, "largest_difference": against}
            shown = ", ".join(f"vs {ref} {'states differ' if d is None else f'{d:.1e}'}" for ref, d in against.items())
            print(f"  {setting:<9} {states}  {shown}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
