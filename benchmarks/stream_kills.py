"""SIGKILL a file-sourced stream at random moments, start it again each time, and check what the ledger promises:
every request applied exactly once, in order, and the final metrics of a stream that was never interrupted.

One small stream (a tiny Llama, GA, one fictitious person per request, read from a JSONL file) runs to its end
uninterrupted first, twice: the second run's wall time (warm: the models and baselines are cached by then, as they
are for every restart) sets the range of the kill times, and its metrics are the reference. Then the
same stream, in another folder, is started and SIGKILLed after a random delay (uniform over 5% to 95% of the
reference's wall time, from the process's start: Ray starting, the model being served, a request training, being
evaluated or written), each time from where the last one left, until `--kills` kills have stopped a running
stream. A start that finishes the stream before its kill lands ends a round: that folder is checked, and the next
kills go to a fresh folder (otherwise every later start would find the stream complete and the kills would stop
nothing). The last round is run to its end.

    python benchmarks/stream_kills.py [--kills 20] [--requests 5] [--seed 0] [--workdir DIR] [--cache DIR]

Prints one line per start (its delay, how many requests were applied by then, whether the kill landed) and the
checks of every round; exits 1 if one fails. `tests/orchestrator/test_stream.py` runs it with 5 kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.stream.ledger import read_only_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # the same seeds, batches and float32 weights from the checkpoint: equal up to float reordering
CONFIG: dict[str, Any] = {
    "name": "stream-kills",
    "model": {"tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
                       "vocab_size": 512},
              "pretrain": None, "finetune": {"epochs": 15, "lr": 3e-3, "batch_size": 16}},
    "data": {"synthetic": {"n_people": 20, "questions_per_person": 4}},
    "train": {"epochs": 2, "lr": 2e-4, "batch_size": 4, "cpus_per_worker": 1},
    "eval": {"max_per_split": 12, "max_new_tokens": 12},
    "ray": {"num_cpus": 2},
    "stream": {"methods": [{"name": "ga"}], "eval_max_per_split": 12, "source": "file"},
}


def write_setup(workdir: Path, requests: int) -> tuple[Path, Path]:
    """The experiment YAML and a requests file naming one person each (the forget people first)."""
    from orchestrator.data.synthetic import make_synthetic_data

    synthetic = CONFIG["data"]["synthetic"]
    data = make_synthetic_data(seed=0, n_people=synthetic["n_people"],
                               questions_per_person=synthetic["questions_per_person"])
    people = list(dict.fromkeys(e.id.split("/")[0] for e in data.forget + data.retain))[:requests]
    lines = workdir / "requests.jsonl"
    lines.write_text("".join(json.dumps({"id": f"r{i + 1}", "items": [p]}) + "\n" for i, p in enumerate(people)))
    config = workdir / "stream.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "stream": {**CONFIG["stream"], "requests": str(lines)}}))
    return config, lines


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "stream", str(config), "--output", str(out)]


def environment(cache: Path) -> dict[str, str]:
    env = {**os.environ, "RAY_UNLEARN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def run_to_end(config: Path, out: Path, env: dict[str, str], log: Path) -> float:
    started = time.monotonic()
    with open(log, "w") as sink:
        done = subprocess.run(command(config, out), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                              timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the stream failed (exit {done.returncode}): {log.read_text()[-3000:]}")
    return time.monotonic() - started


def kill_at_random(config: Path, workdir: Path, env: dict[str, str], kills: int, span: tuple[float, float],
                   rng: random.Random) -> tuple[list[dict[str, Any]], list[Path]]:
    """Start the stream and SIGKILL it after a delay drawn from `span`, until `kills` kills have stopped a running
    stream; a start that finishes first ends its round's folder. What each start met, and the rounds' folders (the
    last one not yet finished)."""
    met: list[dict[str, Any]] = []
    rounds = [workdir / "killed-00"]
    landed = 0
    while landed < kills:
        if len(met) >= 5 * kills:
            raise RuntimeError(f"{len(met)} starts landed only {landed} kills: the kill window is too long")
        out, i = rounds[-1], len(met)
        delay = rng.uniform(*span)
        with open(workdir / f"start-{i:02d}.log", "w") as sink:
            process = subprocess.Popen(command(config, out), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if process.returncode not in (0, -signal.SIGKILL):
            raise RuntimeError(f"start {i} failed (exit {process.returncode}): "
                               f"{(workdir / f'start-{i:02d}.log').read_text()[-3000:]}")
        ledger = out / "ga" / "ledger.sqlite"
        applied = read_only_rows(ledger, "SELECT COUNT(*) FROM batches WHERE state = 'applied'")
        running = read_only_rows(ledger, "SELECT COUNT(*) FROM batches WHERE state = 'running'")
        finished = process.returncode == 0
        met.append({"start": i, "round": len(rounds) - 1, "delay_s": round(delay, 2), "finished_first": finished,
                    "applied": applied[0][0] if applied else 0, "running": running[0][0] if running else 0})
        if finished:
            rounds.append(workdir / f"killed-{len(rounds):02d}")
        else:
            landed += 1
    return met, rounds


def final_metrics(out: Path) -> dict[str, Any]:
    s = json.loads((out / "stream_summary.json").read_text())["methods"]["ga"]
    return {"utility": s["model_utility"], "rouge_l": s["matrix"]["rouge_l"],
            "probability": s["matrix"]["probability"]}


def _largest_difference(got: list, want: list) -> float:
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for a, b in zip(got, want):
        if isinstance(a, list) or isinstance(b, list):
            worst = max(worst, _largest_difference(a or [], b or []))
        elif (a is None) != (b is None):
            return float("inf")
        elif a is not None:
            worst = max(worst, abs(a - b))
    return worst


def checks(out: Path, reference: Path, requests: int) -> dict[str, Any]:
    """Exactly once, in order, and the reference's metrics."""
    ledger = out / "ga" / "ledger.sqlite"
    states = read_only_rows(ledger, "SELECT seq, state FROM requests ORDER BY seq")
    batches = read_only_rows(ledger, "SELECT seqs, state FROM batches ORDER BY batch")
    applied_seqs = [s for seqs, state in batches if state == "applied" for s in json.loads(seqs)]
    events = sorted(s for (s,) in read_only_rows(ledger, "SELECT seq FROM audit WHERE event = 'applied'"))
    got, want = final_metrics(out), final_metrics(reference)
    difference = max(_largest_difference(got[k], want[k]) for k in got)
    everyone = list(range(1, requests + 1))
    return {"every_request_applied": states == [(s, "applied") for s in everyone],
            "applied_once_in_order": applied_seqs == everyone and events == everyone,
            "abandoned_batches": sum(1 for _, state in batches if state == "abandoned"),
            "largest_metric_difference": difference, "metrics_equal": difference <= TOLERANCE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="default: a temporary folder")
    parser.add_argument("--cache", help="the tiny models' cache (RAY_UNLEARN_CACHE); default: WORKDIR/cache. The "
                        "warm-up run is skipped when it already holds files")
    args = parser.parse_args(argv)
    if args.kills < 1 or not 1 <= args.requests <= 20:
        parser.error("--kills must be >= 1 and --requests 1..20 (the data set's people)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stream-kills-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else workdir / "cache"
    env = environment(cache)
    config, _ = write_setup(workdir, args.requests)
    # Twice on a cold cache: the first run also prepares the cached tokenizer, models and baselines, which the
    # restarts skip; the second's wall time (a warm start to the last request) sets the kill window.
    if not cache.is_dir() or not any(cache.iterdir()):
        run_to_end(config, workdir / "warm-up", env, workdir / "warm-up.log")
    wall = run_to_end(config, workdir / "reference", env, workdir / "reference.log")
    print(f"uninterrupted, warm: {args.requests} requests in {wall:.1f} s; killing at uniform({0.05 * wall:.1f}, "
          f"{0.95 * wall:.1f}) s after each start, {args.kills} times", flush=True)
    met, rounds = kill_at_random(config, workdir, env, args.kills, (0.05 * wall, 0.95 * wall),
                                 random.Random(args.seed))
    for m in met:
        print(f"start {m['start']:>2} (round {m['round']}) after {m['delay_s']:>6.2f} s: {m['applied']} applied, "
              f"{m['running']} running, " + ("finished first: round over" if m["finished_first"] else "killed"),
              flush=True)
    landed = [m for m in met if not m["finished_first"]]
    print(f"{len(landed)} kills stopped a running stream, over {len(met)} starts and {len(rounds)} round(s)",
          flush=True)
    run_to_end(config, rounds[-1], env, workdir / "last.log")
    per_round = [checks(out, workdir / "reference", args.requests) for out in rounds]
    result = {"kills": landed, "starts": met, "rounds": len(rounds),
              "every_request_applied": all(r["every_request_applied"] for r in per_round),
              "applied_once_in_order": all(r["applied_once_in_order"] for r in per_round),
              "abandoned_batches": sum(r["abandoned_batches"] for r in per_round),
              "largest_metric_difference": max(r["largest_metric_difference"] for r in per_round),
              "metrics_equal": all(r["metrics_equal"] for r in per_round)}
    (workdir / "kills.json").write_text(json.dumps(result, indent=2))
    print(f"every request applied: {result['every_request_applied']}; each once, in order: "
          f"{result['applied_once_in_order']}; batches abandoned by a kill: {result['abandoned_batches']}; "
          f"final metrics vs uninterrupted: largest difference {result['largest_metric_difference']:.2e} "
          f"({'equal' if result['metrics_equal'] else 'DIFFERENT'} at {TOLERANCE})")
    ok = result["every_request_applied"] and result["applied_once_in_order"] and result["metrics_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
