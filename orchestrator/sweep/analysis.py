"""What a sweep's trials say: the trade-off front, its hypervolume, robustness, tunability, expected best.

Pure functions of plain trial records (no Ray, no torch, no files), each tested on hand-made trials. A trial record
is a dict with at least `method`, `params` (the swept values), `seed`, and the metrics of `trial_metrics`.

The measures:
- *forget efficacy*: `rouge_efficacy` = 1 - forget ROUGE-L / the target's forget ROUGE-L (0: nothing forgotten,
  1: no answer reproduced), or `forget_quality` (TOFU's KS-test p-value against the retain model, higher better),
  or `retain_efficacy`: forget ROUGE-L measured against the retain model's, the model that never saw the forget set
  (`efficacy_against_retain`: 1 at the retain model's level, falling on either side of it, so that forgetting past
  the gold standard, which membership inference then detects, costs score instead of earning it), or
  `attacked_efficacy`: `rouge_efficacy` under the strongest recovery attack (`eval.attacks`: forgetting that a
  relearning step, 4-bit rounding or a rephrased question undoes counts as none);
- *model utility*: `utility` = model utility / the target's (1: unchanged);
- *trade-off score*: the harmonic mean of efficacy and utility, each clipped to [0, 1]: high only when both are
  (destroying the model for full efficacy, or keeping it untouched, both score low).
Both are maximised; the Pareto front and its hypervolume (reference point (0, 0)) are over (efficacy, utility).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Sequence

# sweep.efficacy -> the trial metric it ranks on, and the trade-off score built from it.
EFFICACY_KEYS = {"forget_rouge_l": "rouge_efficacy", "forget_quality": "forget_quality",
                 "retain_model": "retain_efficacy", "attacked": "attacked_efficacy"}
SCORE_KEYS = {"forget_rouge_l": "score", "forget_quality": "score_forget_quality", "retain_model": "score_retain",
              "attacked": "score_attacked"}


def efficacy_against_retain(target: float | None, retain: float | None, after: float | None) -> float | None:
    """Forget efficacy of a metric that unlearning lowers (forget ROUGE-L), with the retain model as the goal.

    From the target's value T down to the retain model's R it rises linearly from 0 to 1, (T - A) / (T - R); below
    R it falls linearly back to 0 at A = 0, 1 - (R - A) / R: a model that forgot more than one that never saw the
    data is as far from the goal as one that forgot too little. None when a value is missing or T <= R (nothing
    to forget by this measure)."""
    if target is None or retain is None or after is None or not target > retain:
        return None
    if after >= retain:
        return min(max((target - after) / (target - retain), 0.0), 1.0)
    return 1.0 - (retain - after) / retain if retain > 0 else 1.0


def attacked_efficacy(rouge_efficacy: float | None, attacks: dict[str, Any] | None) -> float | None:
    """The forget efficacy left under the strongest recovery attack: the least of 1 - attacked / before over the
    attacks (`summary.json`'s `attacks.worst`) and of the efficacy unattacked; None when no attack ran."""
    worst = ((attacks or {}).get("worst") or {}).get("forget_rouge_l") or {}
    if worst.get("efficacy") is None:
        return None
    return worst["efficacy"] if rouge_efficacy is None else min(worst["efficacy"], rouge_efficacy)


def trial_metrics(before: dict[str, Any], after: dict[str, Any], retain: dict[str, Any] | None = None,
                  attacks: dict[str, Any] | None = None) -> dict[str, float | None]:
    """A trial's efficacy and utility from the target's (`before`), the unlearned model's (`after`) and, where there
    is one, the retain model's (`retain`) summaries, and the recovery attacks' (`attacks`) where they ran."""
    def ratio(key: str) -> float | None:
        b, a = before.get(key), after.get(key)
        return None if a is None or not b else a / b

    forget_left = ratio("forget_rouge_l")
    utility = ratio("model_utility")
    rouge_efficacy = None if forget_left is None else 1.0 - forget_left
    retain_efficacy = efficacy_against_retain(before.get("forget_rouge_l"), (retain or {}).get("forget_rouge_l"),
                                              after.get("forget_rouge_l"))
    attacked = attacked_efficacy(rouge_efficacy, attacks)
    worst_recovery = (((attacks or {}).get("worst") or {}).get("forget_rouge_l") or {}).get("recovery")
    return {"rouge_efficacy": rouge_efficacy, "forget_quality": after.get("forget_quality"),
            "retain_efficacy": retain_efficacy, "attacked_efficacy": attacked, "worst_recovery": worst_recovery,
            "utility": utility,
            "forget_rouge_l": after.get("forget_rouge_l"), "retain_rouge_l": after.get("retain_rouge_l"),
            "model_utility": after.get("model_utility"), "mia_auc": after.get("mia_auc"),
            "score": tradeoff_score(rouge_efficacy, utility),
            "score_forget_quality": tradeoff_score(after.get("forget_quality"), utility),
            "score_retain": tradeoff_score(retain_efficacy, utility),
            "score_attacked": tradeoff_score(attacked, utility)}


def tradeoff_score(efficacy: float | None, utility: float | None) -> float | None:
    """Harmonic mean of efficacy and utility, each clipped to [0, 1]; 0 when either is 0."""
    if efficacy is None or utility is None or not (math.isfinite(efficacy) and math.isfinite(utility)):
        return None
    e, u = min(max(efficacy, 0.0), 1.0), min(max(utility, 0.0), 1.0)
    return 0.0 if e + u == 0 else 2 * e * u / (e + u)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates maximised), in input order.

    q dominates p when q >= p in both coordinates and q > p in at least one; equal points are all kept."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(qx >= x and qy >= y and (qx > x or qy > y) for j, (qx, qy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by the points and bounded below by `reference` (both coordinates maximised).

    Points not above the reference in both coordinates add nothing. Sweeping the front by descending x, each point
    adds the rectangle between its y and the highest y seen so far."""
    rx, ry = reference
    kept = sorted(((x, y) for x, y in points if x > rx and y > ry), key=lambda p: (-p[0], -p[1]))
    area, top = 0.0, ry
    for x, y in kept:
        if y > top:
            area += (x - rx) * (y - top)
            top = y
    return area


def cell_key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def cells(trials: Iterable[dict[str, Any]], metric: str = "score") -> dict[str, dict[str, Any]]:
    """One method's trials grouped by cell (same swept values, any seed): mean and spread over seeds of `metric`.

    `spread` is max - min over the cell's seeds (0 for a single seed); trials without `metric` are left out."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        if t.get(metric) is not None:
            groups.setdefault(cell_key(t["params"]), []).append(t)
    out = {}
    for key, group in groups.items():
        values = [t[metric] for t in group]
        out[key] = {"params": group[0]["params"], "n": len(values), "mean": sum(values) / len(values),
                    "spread": max(values) - min(values), "seeds": sorted(t["seed"] for t in group),
                    "efficacy": _mean(t.get("efficacy") for t in group),
                    "utility": _mean(t.get("utility") for t in group)}
    return out


def robustness(trials: Sequence[dict[str, Any]], tolerance: float, default: dict[str, Any] | None = None,
               metric: str = "score") -> dict[str, Any]:
    """One method's robustness over its grid.

    - `worst`: the worst cell's mean (how far a bad pick of hyperparameters falls);
    - `near_best`: share of its cells whose mean (over seeds) `metric` is within `tolerance` of the best cell's;
    - `seed_spread_mean` / `seed_spread_max`: the spread (max - min) over seeds, averaged / worst over cells;
    - `tunability` (Probst, Boulesteix and Bischl 2019, JMLR 20(53)): best cell's mean minus the default cell's
      (None when the default cell was not run); 0 means the paper's default is already the best.
    """
    table = cells(trials, metric)
    if not table:
        return {"cells": 0, "best": None, "worst": None, "near_best": None, "seed_spread_mean": None, "seed_spread_max": None,
                "default": None, "tunability": None, "best_params": None}
    best_key = max(table, key=lambda k: table[k]["mean"])
    best = table[best_key]["mean"]
    near = sum(1 for c in table.values() if c["mean"] >= best - tolerance - 1e-12)
    default_cell = table.get(cell_key(default)) if default is not None else None
    spreads = [c["spread"] for c in table.values()]
    return {"cells": len(table), "best": best, "best_params": table[best_key]["params"],
            "worst": min(c["mean"] for c in table.values()),
            "near_best": near / len(table), "seed_spread_mean": sum(spreads) / len(spreads),
            "seed_spread_max": max(spreads),
            "default": None if default_cell is None else default_cell["mean"],
            "tunability": None if default_cell is None else best - default_cell["mean"]}


def expected_max(scores: Sequence[float], n: int) -> float:
    """Expected maximum of n draws without replacement from the observed scores (Dodge et al. 2019, EMNLP,
    "Show your work"): with v_1 <= ... <= v_N sorted, P(max = v_i) = C(i-1, n-1) / C(N, n)."""
    values = sorted(scores)
    total = len(values)
    if not 1 <= n <= total:
        raise ValueError(f"n={n} must lie in 1..{total}")
    ways = math.comb(total, n)
    return sum(v * math.comb(i, n - 1) for i, v in enumerate(values)) / ways  # i = (rank - 1)


def expected_max_curve(scores: Sequence[float]) -> list[float]:
    """`expected_max(scores, n)` for n = 1 .. len(scores)."""
    return [expected_max(scores, n) for n in range(1, len(scores) + 1)]


def marginals(trials: Sequence[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """How efficacy, utility and the score move across one hyperparameter's values (means over everything else)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for t in trials:
        if param in t["params"] and t.get("score") is not None:
            groups.setdefault(t["params"][param], []).append(t)
    return [{"value": v, "n": len(g), "efficacy": _mean(t.get("efficacy") for t in g),
             "utility": _mean(t.get("utility") for t in g), "score": _mean(t["score"] for t in g)}
            for v, g in sorted(groups.items(), key=lambda kv: kv[0])]


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
