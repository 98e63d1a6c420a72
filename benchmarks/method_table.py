"""Every method at its default hyperparameters on the embedded default: the before/after table.

Runs `run_unlearning` once per method (one local Ray, one resident Ray Train worker group, the prepared
target/retain models shared through the cache)
and prints forget/retain ROUGE-L, forget quality, model utility and MIA AUC, with the foundation's bar: forget
ROUGE-L at most half the target's, retain ROUGE-L at least 80% of the target's.

    python benchmarks/method_table.py [CONFIG] [--methods npo,undial] [--output runs/table] [--set train.epochs=5]

With a config whose data carries probes (`experiments/hazard_rmu.yaml`: the hazardous and the neighbouring questions),
it also prints each probe before -> after per method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

import methods
from orchestrator.config import load_config
from orchestrator.run.prepare import prepare
from orchestrator.run.resident import ResidentWorkers
from orchestrator.run.unlearning import run_unlearning

MUST_PASS = {"npo", "undial", "graddiff", "ihl", "ihl_fila", "icu", "soul"}  # issue 10's bar


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="experiment YAML (default: embedded default)")
    parser.add_argument("--methods", default=",".join(methods.available_methods()))
    parser.add_argument("--output", default="runs/method-table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    overrides = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    base = load_config(args.config)
    if overrides:
        base = base.with_overrides(**overrides)
    prepared = prepare(base, progress=lambda m: print(m, file=sys.stderr))
    rows = []
    # One resident Ray Train worker group serves every method (a TorchTrainer per run doubles the wall time of the
    # embedded default's runs); DeepSpeed runs take a TorchTrainer each (orchestrator/run/resident.py).
    workers = None if base.train.deepspeed else ResidentWorkers(
        base.train.workers, base.train.cpus_per_worker, base.train.use_gpu, progress=lambda m: print(m, file=sys.stderr))
    try:
        for name in args.methods.split(","):
            config = base.with_overrides(**{"method.name": name, "method.hparams": {},
                                            "output_dir": str(Path(args.output) / name)})
            result = run_unlearning(config, prepared=prepared, workers=workers,
                                    progress=lambda m: print(m, file=sys.stderr))
            rows.append(result)
            print(f"{name}: done in {result.seconds:.0f} s", file=sys.stderr)
    finally:
        if workers is not None:
            workers.close()

    header = (f"{'method':10} {'forget RL':>9} {'retain RL':>9} {'nbr RL':>7} {'forget Q':>9} {'utility':>7} "
              f"{'MIA AUC':>7} {'train s':>7}  verdict")
    before = rows[0].before
    print(f"\ntarget model: forget ROUGE-L {_num(before['forget_rouge_l'])}, retain ROUGE-L "
          f"{_num(before['retain_rouge_l'])}, forget quality {_num(before['forget_quality'], '.2g')}, "
          f"utility {_num(before['model_utility'])}, MIA AUC {_num(before['mia_auc'])}, "
          f"alt_mass_top10 {_num(before.get('alt_mass_top10'))}")
    print(header)
    print("-" * len(header))
    table = []
    for r in rows:
        a = r.after
        halved = a["forget_rouge_l"] <= 0.5 * r.before["forget_rouge_l"]
        kept = a["retain_rouge_l"] >= 0.8 * r.before["retain_rouge_l"]
        verdict = ("ok" if halved and kept else
                   ("forget not halved" if not halved else "") + (" retain < 80%" if not kept else ""))
        if r.method not in MUST_PASS:
            verdict += " (informative)"
        print(f"{r.method:10} {_num(a['forget_rouge_l']):>9} {_num(a['retain_rouge_l']):>9} "
              f"{_num(a['neighbour_rouge_l']):>7} {_num(a['forget_quality'], '.2g'):>9} "
              f"{_num(a['model_utility']):>7} {_num(a['mia_auc']):>7} "
              f"{r.timings['train_loop']:7.1f}  {verdict.strip()}")
        table.append({"method": r.method, "before": r.before, "after": a, "verdict": verdict.strip()})
    _print_probes(rows)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "table.json").write_text(json.dumps(table, indent=2))
    return 0


def _print_probes(rows: list) -> None:
    """A benchmark's own evaluation sets (the hazard questions, WMDP, MMLU, MUSE's VerbMem and KnowMem): each probe's
    score before -> after per method (accuracy for four-choice probes, ROUGE-L F1 for generated ones)."""
    names = sorted(k.removeprefix("probe_") for k in rows[0].before if k.startswith("probe_")) if rows else []
    if not names:
        return
    print("\nprobes, before -> after:")
    print(f"{'method':10} " + " ".join(f"{n:>22}" for n in names))
    for r in rows:
        cells = [f"{_num(r.before[f'probe_{n}'])} -> {_num(r.after[f'probe_{n}'])}" for n in names]
        print(f"{r.method:10} " + " ".join(f"{c:>22}" for c in cells))


def _num(value: float | None, spec: str = ".3f") -> str:
    """A metric for the table; '-' where it does not apply (no forget quality for a text corpus)."""
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
