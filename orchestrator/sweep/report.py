"""A sweep's answer: `sweep_summary.json` (everything, machine-readable) and `sweep_report.md` with PNG plots.

`build_summary` is a pure function of the trial records (`driver._trial_record`), so the report can be re-derived
and tested without Ray; `write_sweep_report` adds the files and plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from orchestrator.config import ExperimentConfig
from orchestrator.files import write_text_atomically
from orchestrator.sweep import analysis
from orchestrator.sweep.space import method_defaults, same_params

SUMMARY_FILE = "sweep_summary.json"
REPORT_FILE = "sweep_report.md"
PLOTS_DIR = "plots"
EFFICACIES = {"rouge_efficacy": "1 - forget ROUGE-L / target's", "forget_quality": "forget quality (KS p-value)",
              "retain_efficacy": "forget ROUGE-L against the retain model's",
              "attacked_efficacy": "1 - forget ROUGE-L / target's, under the strongest attack"}
DEFINITIONS = {
    "rouge_efficacy": "forget efficacy = 1 - (forget ROUGE-L recall after) / (the target's forget ROUGE-L recall)",
    "forget_quality": "forget efficacy = TOFU forget quality: KS-test p-value of truth ratios vs the retain model",
    "retain_efficacy": "forget efficacy against the retain model (R, its forget ROUGE-L; T, the target's): "
                       "(T - after) / (T - R) down to R, then 1 - (R - after) / R below it (over-unlearning)",
    "attacked_efficacy": "attacked efficacy = the least of 1 - (forget ROUGE-L after) / (the target's) over "
                         "the recovery attacks (each on its own examples) and no attack",
    "worst_recovery": "recovery of the strongest attack on forget ROUGE-L: (attacked - unlearned) / "
                      "(target - unlearned)",
    "utility": "utility = (model utility after) / (the target's model utility); 1 = unchanged",
    "score": "trade-off score = harmonic mean of efficacy and utility, each clipped to [0, 1]",
    "near_best": "share of a method's cells (mean over seeds) whose score is within the tolerance of its best cell",
    "seed_spread": "max - min of the score over the seeds of one cell",
    "tunability": "best cell's mean score - the default cell's (paper hyperparameters, recipe lr/epochs); "
                  "Probst et al. 2019",
    "expected_max": "expected best score of n trials drawn without replacement from the method's trials; "
                    "Dodge et al. 2019",
}


def build_summary(config: ExperimentConfig, trials: Sequence[dict[str, Any]], defaults: dict[str, Any],
                  slots: int, sessions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Fronts, hypervolumes, robustness, tunability, expected-max curves, marginals and timing of a sweep."""
    sweep = config.sweep
    assert sweep is not None
    primary = analysis.EFFICACY_KEYS[sweep.efficacy]
    default_params = {m: method_defaults(sweep, m, defaults[m]) for m in sweep.methods}
    records = []
    for t in trials:
        t = dict(t)
        t["efficacy"] = t.get(primary)
        t["score"] = t.get(analysis.SCORE_KEYS[sweep.efficacy])
        t["is_default"] = same_params(t["params"], default_params[t["method"]])
        records.append(t)
    done = [t for t in records if t["status"] == "complete" and t.get("score") is not None]
    by_method = {m: [t for t in done if t["method"] == m] for m in sweep.methods}

    fronts = {}
    for key in EFFICACIES:
        usable = [t for t in done if t.get(key) is not None and t.get("utility") is not None]
        pts = [(t[key], t["utility"]) for t in usable]
        per_method = {}
        for m in sweep.methods:
            mine = [t for t in usable if t["method"] == m]
            mpts = [(t[key], t["utility"]) for t in mine]
            per_method[m] = {"front": [mine[i]["trial_id"] for i in analysis.pareto_front(mpts)],
                             "hypervolume": analysis.hypervolume(mpts)}
        fronts[key] = {"all": [usable[i]["trial_id"] for i in analysis.pareto_front(pts)], "per_method": per_method}

    robustness = {m: {**analysis.robustness(by_method[m], sweep.tolerance, default_params[m]),
                      "trials": len(by_method[m]),
                      "hypervolume": fronts[primary]["per_method"][m]["hypervolume"],
                      # Under recovery attack (sweep.attacks): the mean over the method's trials.
                      "attacked_efficacy_mean": _mean_of(by_method[m], "attacked_efficacy"),
                      "worst_recovery_mean": _mean_of(by_method[m], "worst_recovery")} for m in sweep.methods}
    curves = {m: analysis.expected_max_curve([t["score"] for t in by_method[m]]) for m in sweep.methods
              if by_method[m]}
    marginals = {m: {p: analysis.marginals(by_method[m], p) for p in sweep.methods[m].space} for m in sweep.methods}

    train_eval = sum((t["timings"].get("train_loop") or 0) + (t["timings"].get("evaluate") or 0) for t in done)
    wall_total = sum(s["wall_seconds"] for s in sessions)
    ideal = train_eval / slots if slots else None
    resident = sweep.runs_resident(config.train.sharded_checkpoints)
    groups = {(t.get("slot"), t.get("slot_group_starts")) for t in done if t.get("slot")}
    timing = {"trial_workers": "resident" if resident else "per_trial",
              # resident: the Ray Train worker groups that served the trials (a TorchTrainer per trial: one each)
              "worker_groups": len(groups) if resident else len(done),
              "wall_seconds": round(sessions[-1]["wall_seconds"], 2) if sessions else None,
              "wall_seconds_total": round(wall_total, 2), "sessions": len(sessions), "slots": slots,
              "sum_train_loop_evaluate": round(train_eval, 2),
              "sum_trial_seconds": round(sum(t.get("seconds") or 0 for t in done), 2),
              "ideal_seconds": None if ideal is None else round(ideal, 2),
              "wall_over_ideal": None if not ideal else round(wall_total / ideal, 3),
              "mean_trial": {k: _mean_timing(done, k) for k in ("prepare", "ray_train_start", "worker_setup",
                                                                 "train_loop", "evaluate", "export",
                                                                 "ray_train_finish")}}
    counts: dict[str, int] = {}
    for t in records:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return {"experiment": config.name, "search": sweep.search, "methods": list(sweep.methods),
            "seeds": list(sweep.seeds), "efficacy": sweep.efficacy, "tolerance": sweep.tolerance,
            "definitions": DEFINITIONS, "defaults": default_params, "status": counts, "trials": records,
            "pareto": fronts, "robustness": robustness, "expected_max": curves, "marginals": marginals,
            "timing": timing}


def _mean_timing(trials: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [t["timings"].get(key) for t in trials if t["timings"].get(key) is not None]
    return round(sum(values) / len(values), 2) if values else None


def write_sweep_report(config: ExperimentConfig, folder: Path, trials: Sequence[dict[str, Any]],
                       defaults: dict[str, Any], slots: int, sessions: Sequence[dict[str, Any]]):
    """Write `sweep_summary.json`, the plots and `sweep_report.md`; returns (summary, summary path, report path)."""
    from orchestrator.sweep import plots

    summary = build_summary(config, trials, defaults, slots, sessions)
    plot_dir = folder / PLOTS_DIR
    plot_dir.mkdir(parents=True, exist_ok=True)
    done = [t for t in summary["trials"] if t["status"] == "complete"]
    images: list[tuple[str, str]] = []
    for key, label in EFFICACIES.items():
        plots.tradeoff_scatter(done, key, label, plot_dir / f"tradeoff_{key}.png")
        images.append((f"Trade-off ({label})", f"{PLOTS_DIR}/tradeoff_{key}.png"))
    if summary["expected_max"]:
        plots.expected_max_plot(summary["expected_max"], plot_dir / "expected_max.png")
        images.append(("Expected best trade-off vs trials", f"{PLOTS_DIR}/expected_max.png"))
    for m, params in summary["marginals"].items():
        if any(params.values()):
            plots.marginals_plot(m, params, plot_dir / f"marginals_{m}.png")
            images.append((f"{m}: hyperparameters", f"{PLOTS_DIR}/marginals_{m}.png"))
        names = list(config.sweep.methods[m].space)
        if len(names) >= 2:
            table = _heat_table([t for t in done if t["method"] == m], names[0], names[1])
            if table:
                plots.heatmap(m, names[0], names[1], table, plot_dir / f"heatmap_{m}.png")
                images.append((f"{m}: {names[0]} x {names[1]}", f"{PLOTS_DIR}/heatmap_{m}.png"))
    summary["plots"] = [path for _, path in images]
    summary_path = folder / SUMMARY_FILE
    write_text_atomically(summary_path, json.dumps(summary, indent=2, default=str))
    report_path = folder / REPORT_FILE
    write_text_atomically(report_path, markdown(summary, images))
    return summary, summary_path, report_path


def _mean_of(trials: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get(key) is not None]
    return sum(values) / len(values) if values else None


def _heat_table(trials: Sequence[dict[str, Any]], x: str, y: str) -> dict[tuple[Any, Any], float]:
    groups: dict[tuple[Any, Any], list[float]] = {}
    for t in trials:
        if x in t["params"] and y in t["params"] and t.get("score") is not None:
            groups.setdefault((t["params"][x], t["params"][y]), []).append(t["score"])
    return {k: sum(v) / len(v) for k, v in groups.items()}


def _f(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _params(params: dict[str, Any] | None) -> str:
    return "-" if not params else ", ".join(f"{k}={_f(v) if isinstance(v, float) else v}" for k, v in params.items())


def markdown(summary: dict[str, Any], images: Sequence[tuple[str, str]]) -> str:
    """The report: the answer (robustness table) first, then fronts, budgets, hyperparameters, every trial."""
    primary = analysis.EFFICACY_KEYS[summary["efficacy"]]
    timing, rob = summary["timing"], summary["robustness"]
    lines = [f"# Sweep: {summary['experiment']}", "",
             f"{summary['search']} search over {', '.join(summary['methods'])}; seeds {summary['seeds']}; trials: "
             + ", ".join(f"{n} {s}" for s, n in sorted(summary["status"].items()))
             + f". Wall time {_f(timing['wall_seconds_total'], 1)} s with {timing['slots']} trial(s) at once"
             + (f", served by {timing['worker_groups']} resident Ray Train worker group(s)."
                if timing.get("trial_workers") == "resident" else ", a TorchTrainer per trial."), "",
             "## Measures", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary["definitions"].items()]
    lines += ["", f"The robustness figures use **{primary}** as forget efficacy; tolerance "
              f"{summary['tolerance']} on the score.", "", "## Robustness", "",
              "| method | trials | cells | best score | best cell | worst cell score | near best | seed spread mean / "
              "max | default score | tunability | hypervolume |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in rob.items():
        lines.append(f"| {m} | {r['trials']} | {r['cells']} | {_f(r['best'])} | {_params(r['best_params'])} | "
                     f"{_f(r['worst'])} | "
                     f"{_f(r['near_best'], 2)} | {_f(r['seed_spread_mean'])} / {_f(r['seed_spread_max'])} | "
                     f"{_f(r['default'])} | {_f(r['tunability'])} | {_f(r['hypervolume'])} |")
    if any(r.get("attacked_efficacy_mean") is not None for r in rob.values()):
        lines += ["", "Under recovery attack (sweep.attacks; means over each method's trials):", "",
                  "| method | efficacy (unattacked) | attacked efficacy | worst recovery |", "|---|---|---|---|"]
        for m, r in rob.items():
            mine = [t for t in summary["trials"] if t["method"] == m and t["status"] == "complete"]
            lines.append(f"| {m} | {_f(_mean_of(mine, 'rouge_efficacy'))} | "
                         f"{_f(r.get('attacked_efficacy_mean'))} | {_f(r.get('worst_recovery_mean'))} |")
    ranked = sorted((m for m in rob if rob[m]["near_best"] is not None),
                    key=lambda m: (-rob[m]["near_best"], rob[m]["seed_spread_mean"]))
    if ranked:
        lines += ["", "Most robust first (share of the grid near its best, then the smaller seed spread): "
                  + ", ".join(f"{m} ({rob[m]['near_best']:.0%})" for m in ranked) + "."]
    lines += ["", "## Pareto fronts", ""]
    for key, label in EFFICACIES.items():
        front = summary["pareto"][key]
        lines.append(f"- {label} vs utility: front of all trials {', '.join(front['all']) or '-'}; hypervolume "
                     + ", ".join(f"{m} {_f(v['hypervolume'])}" for m, v in front["per_method"].items()))
    lines += ["", "## Expected best trade-off vs number of trials", "", "| method | " + " | ".join(
        f"n={n}" for n in _budget_points(summary)) + " |", "|---|" + "---|" * len(_budget_points(summary))]
    for m, curve in summary["expected_max"].items():
        lines.append(f"| {m} | " + " | ".join(_f(curve[n - 1]) if n <= len(curve) else "-"
                                            for n in _budget_points(summary)) + " |")
    lines += ["", "## Hyperparameters", ""]
    for m, params in summary["marginals"].items():
        for p, rows in params.items():
            if rows:
                lines.append(f"- {m} / {p}: " + "; ".join(
                    f"{_f(r['value'])}: efficacy {_f(r['efficacy'])}, utility {_f(r['utility'])}, score "
                    f"{_f(r['score'])}" for r in rows))
    lines += ["", "## Plots", ""] + [f"![{title}]({path})" for title, path in images]
    lines += ["", "## Time", "",
              f"Wall {_f(timing['wall_seconds_total'], 1)} s over {timing['sessions']} session(s); the trials' "
              f"train loops and evaluations sum to {_f(timing['sum_train_loop_evaluate'], 1)} s, / "
              f"{timing['slots']} slot(s) = {_f(timing['ideal_seconds'], 1)} s: wall / ideal = "
              f"{_f(timing['wall_over_ideal'])}. Mean per trial: "
              + ", ".join(f"{k} {_f(v, 2)} s" for k, v in timing["mean_trial"].items()) + ".",
              "", "## Trials", "",
              "| trial | method | cell | seed | status | efficacy | forget quality | utility | score | seconds | "
              "train + eval s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in summary["trials"]:
        te = (t["timings"].get("train_loop") or 0) + (t["timings"].get("evaluate") or 0)
        lines.append(f"| {t['trial_id']} | {t['method']} | {_params(t['params'])}{' (default)' * t['is_default']} "
                     f"| {t['seed']} | {t['status']} | {_f(t.get(primary))} | {_f(t.get('forget_quality'))} | "
                     f"{_f(t.get('utility'))} | {_f(t.get('score'))} | {_f(t.get('seconds'), 1)} | {_f(te, 1)} |")
    return "\n".join(lines) + "\n"


def _budget_points(summary: dict[str, Any]) -> list[int]:
    longest = max((len(c) for c in summary["expected_max"].values()), default=0)
    return sorted({n for n in (1, 2, 4, 8, 16, 32, longest) if 1 <= n <= longest})
