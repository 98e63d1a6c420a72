"""From attacked values to recovery: how much of what unlearning removed an attack brings back.

recovery = (after the attack - after unlearning) / (before unlearning - after unlearning), per metric, each value
the mean over the examples the attack was scored on (relearning: the forget examples it never trained on). 0: the
attack brings nothing back; 1: the model is back at the target's level. Torch-free: the driver computes it from
the workers' values and the evaluation reports.
"""

from __future__ import annotations

from typing import Any, Sequence

METRICS = {"forget_rouge_l": "rouge_l", "forget_probability": "probability"}  # summary name -> per-example name
NOTHING_FORGOTTEN = 1e-9  # before - after below this: no recovery is defined (the metric did not fall)


def recovery(before: float | None, after: float | None, attacked: float | None) -> float | None:
    """(attacked - after) / (before - after); None where a value is missing or unlearning lowered nothing."""
    if before is None or after is None or attacked is None or before - after < NOTHING_FORGOTTEN:
        return None
    return (attacked - after) / (before - after)


def subset_mean(per_example: dict[str, dict[str, float]], ids: Sequence[str], name: str) -> float | None:
    """Mean of one per-example metric over `ids` (those present); None when none is."""
    values = [per_example[i][name] for i in ids if i in per_example and per_example[i].get(name) is not None]
    return sum(values) / len(values) if values else None


def attack_summary(results: Sequence[dict[str, Any]], before: dict[str, dict[str, float]],
                   after: dict[str, dict[str, float]], baselines: dict[str, dict[str, dict[str, Any]]] | None = None,
                   retain_before: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """`summary.json`'s `attacks`: per attack, each metric before, after, attacked and its recovery; then `worst`.

    `results`: `AttackResult` dicts of the unlearned model; `before` / `after`: the target's and the unlearned
    model's per-example forget values (`EvalReport.forget_examples`). `baselines`: the same attacks on the
    "retain_model" and the "target" (`Prepared.attack_baselines`), with `retain_before` the retain model's own
    per-example values: per attack and metric, `retain_model` holds its value before and under the attack (for
    relearning: the control) and the recovery the unlearned model would show by reaching it, `target` the target's
    value under the attack."""
    baselines = baselines or {}
    summary: dict[str, Any] = {}
    for result in results:
        ids, name = result["ids"], result["name"]
        entry: dict[str, Any] = {"examples": len(ids), "seconds": result["seconds"], **result["detail"]}
        for metric, key in METRICS.items():
            b, a = subset_mean(before, ids, key), subset_mean(after, ids, key)
            attacked = result["values"].get(metric)
            entry[metric] = {"before": b, "after": a, "attacked": attacked, "recovery": recovery(b, a, attacked)}
            retain = baselines.get("retain_model", {}).get(name)
            if retain is not None:
                entry[metric]["retain_model"] = {
                    "before": subset_mean(retain_before or {}, retain["ids"], key),
                    "attacked": retain["values"].get(metric),
                    "recovery": recovery(b, a, retain["values"].get(metric))}
            target = baselines.get("target", {}).get(name)
            if target is not None:
                entry[metric]["target"] = {"attacked": target["values"].get(metric)}
        summary[name] = entry
    summary["worst"] = worst_case(summary)
    return summary


def worst_case(summary: dict[str, Any]) -> dict[str, Any]:
    """Per metric, the attack that brings back the most: its name, its recovery, and the forget efficacy left
    under it, 1 - attacked / before (the attacked efficacy a sweep can rank on)."""
    worst: dict[str, Any] = {}
    for metric in METRICS:
        rows = [(name, entry[metric]) for name, entry in summary.items() if metric in entry]
        scored = [(name, v) for name, v in rows if v["recovery"] is not None]
        efficacies = [1.0 - v["attacked"] / v["before"] for _, v in rows
                      if v["attacked"] is not None and v["before"]]
        top = max(scored, key=lambda row: row[1]["recovery"]) if scored else None
        worst[metric] = {"attack": top[0] if top else None, "recovery": top[1]["recovery"] if top else None,
                         "efficacy": min(efficacies) if efficacies else None}
    return worst
