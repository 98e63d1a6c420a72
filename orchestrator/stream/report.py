"""`stream_summary.json` and `stream_report.md` from the methods' ledgers (ids, hashes and numbers only).

Built from the ledgers alone, so a report written after a restart covers the whole stream.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from orchestrator.files import write_text_atomically
from orchestrator.stream.attacks import point_summary
from orchestrator.stream.drift import drift_series, forget_matrix, percentile, resurgence
from orchestrator.stream.ledger import LEDGER_FILE, Ledger

SUMMARY_FILE = "stream_summary.json"
REPORT_FILE = "stream_report.md"


def method_summary(folder: Path) -> dict[str, Any]:
    ledger = Ledger(folder / LEDGER_FILE)
    try:
        baseline = ledger.get_meta("baseline") or {}
        rows = ledger.requests()
        batches = ledger.batches()
        method = ledger.get_meta("method")
        points = ledger.attack_points()
    finally:
        ledger.close()
    applied = [b for b in batches if b["state"] == "applied"]
    order = [seq for b in applied for seq in b["seqs"]]
    ids = {r.seq: r.request_id for r in rows}
    requests = []
    for r in rows:
        m = r.metrics or {}
        requests.append({"seq": r.seq, "id": r.request_id, "state": r.state, "reason": r.reason, "batch": r.batch,
                         "items": r.items, "hashes": r.hashes, "checkpoint": r.checkpoint,
                         "latency_s": m.get("latency_s"), "queue_s": m.get("queue_s"),
                         "service_s": m.get("service_s"), "forget_before": m.get("before"),
                         "forget_after": m.get("after"), "model_utility": m.get("model_utility"),
                         "drift": m.get("drift")})
    utilities = [(b["metrics"]["utility"] or {}).get("model_utility") for b in applied]
    drift = drift_series(utilities, baseline.get("model_utility"))
    evaluated = [b["metrics"] for b in applied]
    rouge = forget_matrix(evaluated, order, "rouge_l")
    probability = forget_matrix(evaluated, order, "probability")
    service = [b["timings"]["service"] for b in batches if b["timings"]]
    outside = [b["timings"]["outside"] / b["timings"]["service"] for b in batches
               if b["timings"] and b["timings"]["service"] > 0]
    latencies = [r["latency_s"] for r in requests if r["latency_s"] is not None]
    return {
        "method": method, "baseline": baseline,
        "counts": dict(Counter(r.state for r in rows)),
        "requests": requests,
        "applied_order": [ids[s] for s in order],
        "drift": drift, "model_utility": utilities,
        "matrix": {"rows": "request (in the order applied)", "columns": "after applied batch k",
                   "requests": [ids[s] for s in order], "rouge_l": rouge, "probability": probability},
        "resurgence_rouge_l": dict(zip([ids[s] for s in order], resurgence(rouge))),
        "resurgence_probability": dict(zip([ids[s] for s in order], resurgence(probability))),
        "latency": {"p50_service_s": percentile(service, 50), "p90_service_s": percentile(service, 90),
                    "p50_latency_s": percentile(latencies, 50), "p90_latency_s": percentile(latencies, 90),
                    "mean_outside_share": sum(outside) / len(outside) if outside else None,
                    "batches": len(batches)},
        "batches": [{k: b[k] for k in ("batch", "seqs", "state", "checkpoint", "timings", "reason")}
                    for b in batches],
        # stream.attack_every: per attack point, each applied request's recovery under each attack.
        "attacks": [point_summary(p, ids) for p in points],
    }


def drift_row(name: str, s: dict[str, Any]) -> dict[str, Any]:
    final_rouge = [row[-1] for row in s["matrix"]["rouge_l"] if row and row[-1] is not None]
    resurgent = [v for v in s["resurgence_rouge_l"].values() if v is not None]
    drift = [d for d in s["drift"] if d is not None]
    return {"method": name, "applied": s["counts"].get("applied", 0),
            "rolled_back": s["counts"].get("rolled_back", 0), "quarantined": s["counts"].get("quarantined", 0),
            "utility_original": s["baseline"].get("model_utility"),
            "utility_final": s["model_utility"][-1] if s["model_utility"] else None,
            "drift_final": drift[-1] if drift else None,
            "drift_worst": min(drift) if drift else None,
            "forget_rouge_l_final_mean": sum(final_rouge) / len(final_rouge) if final_rouge else None,
            "resurgence_max": max(resurgent) if resurgent else None,
            "p50_service_s": s["latency"]["p50_service_s"], "mean_outside_share": s["latency"]["mean_outside_share"]}


def write_stream_report(output: Path, method_names: Sequence[str], cfg=None) -> dict[str, Any]:
    methods = {name: method_summary(output / name) for name in method_names if (output / name / LEDGER_FILE).exists()}
    table = [drift_row(name, s) for name, s in methods.items()]
    summary = {"methods": methods, "drift_table": table,
               "policy": cfg.policy.model_dump() if cfg is not None else None}
    write_text_atomically(output / SUMMARY_FILE, json.dumps(summary, indent=2))
    from orchestrator.stream.plots import plot_drift, plot_resurgence

    plots = [plot_drift(methods, output / "drift.png")]
    plots += [plot_resurgence(name, s, output / f"resurgence_{name}.png") for name, s in methods.items()]
    write_text_atomically(output / REPORT_FILE, _markdown(table, methods, [p.name for p in plots if p is not None]))
    return summary


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    return str(value)


def _markdown(table: list[dict[str, Any]], methods: dict[str, Any], plots: list[str]) -> str:
    lines = ["# Request stream", "",
             "Drift: model utility (TOFU's harmonic mean on retain and world sets) minus the original model's, after "
             "the last applied request. Resurgence: the largest rise of a request's forget ROUGE-L after it was "
             "applied (> 0: forgotten answers came back).", "",
             "| method | applied | rolled back | quarantined | utility original | utility final | drift final | "
             "worst drift | forget ROUGE-L final (mean) | max resurgence | p50 service s | outside share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['applied']} | {r['rolled_back']} | {r['quarantined']} | "
                     f"{_fmt(r['utility_original'])} | {_fmt(r['utility_final'])} | {_fmt(r['drift_final'])} | "
                     f"{_fmt(r['drift_worst'])} | {_fmt(r['forget_rouge_l_final_mean'])} | "
                     f"{_fmt(r['resurgence_max'])} | {_fmt(r['p50_service_s'], 2)} | "
                     f"{_fmt(r['mean_outside_share'], 3)} |")
    for name, s in methods.items():
        lines += ["", f"## {name}", "", "| request | state | batch | latency s | forget ROUGE-L before -> after | "
                  "utility | drift | reason |", "|---|---|---|---|---|---|---|---|"]
        for r in s["requests"]:
            before, after = r["forget_before"] or {}, r["forget_after"] or {}
            lines.append(f"| {r['id'] or '-'} | {r['state']} | {r['batch'] or '-'} | {_fmt(r['latency_s'], 2)} | "
                         f"{_fmt(before.get('rouge_l'), 3)} -> {_fmt(after.get('rouge_l'), 3)} | "
                         f"{_fmt(r['model_utility'])} | {_fmt(r['drift'])} | {r['reason'] or ''} |")
        lines += _attack_lines(s.get("attacks") or [])
    lines += [""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _attack_lines(points: list[dict[str, Any]]) -> list[str]:
    """Per attack point, the worst recovery over the requests applied so far (`stream.attack_every`)."""
    if not points:
        return []
    lines = ["", "Recovery attacks: (attacked - after) / (before - after) per request, the worst over requests and "
             "attacks (0: nothing comes back; 1: back at its level before unlearning).", "",
             "| after request | batch | worst ROUGE-L recovery | worst probability recovery | seconds |",
             "|---|---|---|---|---|"]
    for p in points:
        cells = [f"{_fmt(w['recovery'], 3)} ({w['attack']}, {w['request']})" if w["attack"] else "-"
                 for w in (p["worst"]["rouge_l"], p["worst"]["probability"])]
        shown = p["error"] or f"{sum(p['seconds'].values()):.1f}"
        lines.append(f"| {p['after_request']} | {p['batch']} | {cells[0]} | {cells[1]} | {shown} |")
    return lines
