"""Reports of a run: the before/after table for the terminal, and a Markdown report with PNG plots.

Everything here reads `summary.json`'s content, so `unlearn report <run dir>` can re-render a report at any time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# (key, label, which direction is better after unlearning: "down", "up" or "" for informative)
TABLE_ROWS = (
    ("forget_rouge_l", "forget ROUGE-L recall", "down"),
    ("forget_probability", "forget probability", "down"),
    ("forget_truth_ratio", "forget truth ratio", ""),
    ("extraction_strength", "forget extraction strength", "down"),
    ("forget_quality", "forget quality (KS p-value)", "up"),
    ("mia_auc", "MIA AUC (forget vs holdout)", ""),
    ("mia_auc_gradnorm", "MIA AUC, gradient norm (L2)", ""),
    ("mia_auc_reference", "MIA AUC, reference model", ""),
    ("privacy_leakage", "privacy leakage vs retain model", ""),
    ("retain_rouge_l", "retain ROUGE-L recall", "up"),
    ("retain_probability", "retain probability", "up"),
    ("neighbour_rouge_l", "neighbour ROUGE-L recall", "up"),
    ("model_utility", "model utility", "up"),
    ("fluency", "fluency (n-gram entropy)", "up"),
)
PROBE_PREFIX = "probe_"  # summary keys of the probes' headline scores (orchestrator/evaluation/evaluate.py)
# What write_report reads from summary.json (RunResult's fields), checked before a re-render.
SUMMARY_KEYS = ("method", "hyperparameters", "before", "after", "seconds", "timings", "forget_size", "world_size",
                "model_dir")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def comparison_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, target, unlearned, retain model) rows for the metrics present."""
    before, after = summary["before"], summary["after"]
    retain = summary.get("retain_model") or {}
    rows = []
    for key, label, _ in TABLE_ROWS:
        if key in before or key in after:
            rows.append((label, _fmt(before.get(key)), _fmt(after.get(key)), _fmt(retain.get(key))))
    # A benchmark's own evaluation sets (MUSE VerbMem / KnowMem, WMDP, MMLU, the embedded hazard questions).
    for key in sorted({k for k in (*before, *after) if k.startswith(PROBE_PREFIX)}):
        rows.append((f"{key.removeprefix(PROBE_PREFIX)} (probe)", _fmt(before.get(key)), _fmt(after.get(key)),
                     _fmt(retain.get(key))))
    return rows


ATTACK_HEADER = ("attack", "metric", "examples", "before", "unlearned", "attacked", "recovery", "target attacked",
                 "retain model attacked")
ATTACK_METRICS = {"forget_rouge_l": "forget ROUGE-L", "forget_probability": "forget probability"}


def attack_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
    """Per attack and metric: the examples scored, before, after unlearning, after the attack, the recovery, the
    target under the same attack, and the retain model under it (relearning: the same steps, its control); empty
    when no attack ran."""
    rows = []
    for name, entry in (summary.get("attacks") or {}).items():
        if name == "worst":
            continue
        for metric, label in ATTACK_METRICS.items():
            v = entry[metric]
            rows.append((name, label, str(entry["examples"]), _fmt(v["before"]), _fmt(v["after"]),
                         _fmt(v["attacked"]), _fmt(v["recovery"]), _fmt((v.get("target") or {}).get("attacked")),
                         _fmt((v.get("retain_model") or {}).get("attacked"))))
    return rows


def _aligned(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def text_table(summary: dict[str, Any]) -> str:
    """The before/after table as aligned plain text, for the terminal; then the recovery attacks', if any ran."""
    text = _aligned(("metric", "target (before)", "unlearned (after)", "retain model"), comparison_rows(summary))
    attacks = attack_rows(summary)
    return text + ("\n\nrecovery attacks (recovery = (attacked - unlearned) / (before - unlearned))\n"
                   + _aligned(ATTACK_HEADER, attacks) if attacks else "")


def markdown_table(summary: dict[str, Any]) -> str:
    return _markdown(("metric", "target (before)", "unlearned (after)", "retain model"), comparison_rows(summary))


def _plot_history(history: list[dict[str, float]], path: Path) -> bool:
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for h in history for k in h} - {"epoch", "step", "lr", "forget_size"})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h.get("step", i) for i, h in enumerate(history)]
    for key in keys:
        ax.plot(steps, [h.get(key, float("nan")) for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_title("unlearning losses")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_before_after(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("forget_rouge_l", "retain_rouge_l", "neighbour_rouge_l", "model_utility", "mia_auc",
                        "forget_quality") if isinstance(summary["after"].get(k), (int, float))]
    before = [summary["before"].get(k) or 0.0 for k in keys]
    after = [summary["after"].get(k) or 0.0 for k in keys]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(keys))
    ax.bar([i - 0.2 for i in x], before, width=0.4, label="target (before)")
    ax.bar([i + 0.2 for i in x], after, width=0.4, label="unlearned (after)")
    ax.set_xticks(list(x), keys, rotation=20, fontsize=8)
    ax.set_title(f"{summary['method']}: before and after")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result_or_summary: Any, output_dir: str | Path) -> Path:
    """Write report.md (+ PNG plots) for a run into `output_dir`; returns the report's path."""
    summary = result_or_summary if isinstance(result_or_summary, dict) else result_or_summary.to_dict()
    output = Path(output_dir)
    _plot_before_after(summary, output / "before_after.png")
    has_curve = _plot_history(summary.get("history", []), output / "loss_curve.png")
    hp = ", ".join(f"{k}={v}" for k, v in summary["hyperparameters"].items())
    lines = [
        f"# Unlearning report: {summary['method']}",
        "",
        f"- hyperparameters: {hp or '(defaults)'}",
        f"- forget examples: {summary['forget_size']}; workers: {summary['world_size']}; "
        f"ZeRO stage: {summary.get('zero_stage') or '-'}",
        f"- time: {summary['seconds']:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in summary['timings'].items())})",
        "",
        "## Before and after",
        "",
        markdown_table(summary),
        "",
        "![before and after](before_after.png)",
    ]
    if summary.get("attacks"):
        lines += ["", "## Recovery attacks", "",
                  "recovery = (attacked - unlearned) / (before - unlearned): 0, nothing comes back; 1, all of it. "
                  "Relearning is scored on the forget examples it did not train on. The last two columns are the "
                  "target and the retain model (which never saw the forget set) under the same attack: for "
                  "relearning, the retain model after the same steps is the control (what relearning teaches by "
                  "generalisation alone).", "",
                  _markdown(ATTACK_HEADER, attack_rows(summary))]
    if has_curve:
        lines += ["", "## Training", "", "![loss curve](loss_curve.png)"]
    lines += ["", f"Unlearned model: `{summary['model_dir']}` (HF format, `from_pretrained`).", ""]
    path = output / "report.md"
    path.write_text("\n".join(lines))
    return path


def rerender(run_dir: str | Path) -> Path:
    """`unlearn report`: rebuild report.md and plots from a run folder's summary.json."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"no summary.json in {run_dir}: not a run folder")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{summary_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    missing = [key for key in SUMMARY_KEYS if key not in summary] if isinstance(summary, dict) else ["a mapping"]
    if missing:
        raise ValueError(f"{summary_path}: not a run summary (no {', '.join(missing)})")
    return write_report(summary, run_dir)
