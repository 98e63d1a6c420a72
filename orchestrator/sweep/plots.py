"""The sweep report's PNG plots (matplotlib, Agg backend: no display needed). Each function draws one figure from
plain records (`analysis.py`'s outputs) and writes it to `path`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from orchestrator.sweep.analysis import pareto_front  # noqa: E402


def _colours(methods: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def tradeoff_scatter(trials: Sequence[dict[str, Any]], efficacy_key: str, efficacy_label: str, path: Path) -> None:
    """Every trial at (efficacy, utility), one colour per method, each method's Pareto front as a step line."""
    methods = sorted({t["method"] for t in trials})
    colour = _colours(methods)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for m in methods:
        pts = [(t[efficacy_key], t["utility"]) for t in trials
               if t["method"] == m and t.get(efficacy_key) is not None and t.get("utility") is not None]
        if not pts:
            continue
        ax.scatter(*zip(*pts), s=22, alpha=0.7, color=colour[m], label=m)
        front = sorted((pts[i] for i in pareto_front(pts)), key=lambda p: p[0])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=colour[m], lw=1.2)
    _finish(fig, ax, path, f"forget efficacy: {efficacy_label}", "utility (model utility / target's)",
            "Trade-off per trial, with each method's Pareto front")


def expected_max_plot(curves: dict[str, list[float]], path: Path) -> None:
    """Expected best trade-off score against the number of trials drawn (Dodge et al. 2019)."""
    colour = _colours(sorted(curves))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, curve in sorted(curves.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, color=colour[m], label=m)
    _finish(fig, ax, path, "trials drawn at random (without replacement)", "expected best trade-off score",
            "Expected best trade-off vs budget")


def marginals_plot(method: str, marginals: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Per hyperparameter of one method: mean efficacy, utility and score over its values."""
    params = [p for p, rows in marginals.items() if rows]
    fig, axes = plt.subplots(1, max(1, len(params)), figsize=(4.2 * max(1, len(params)), 3.6), squeeze=False)
    for ax, p in zip(axes[0], params):
        rows = marginals[p]
        xs = [r["value"] for r in rows]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        positions = xs if numeric else list(range(len(xs)))
        for key, style in (("efficacy", "o-"), ("utility", "s-"), ("score", "^--")):
            ax.plot(positions, [r[key] if r[key] is not None else float("nan") for r in rows], style, label=key)
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(positions, [str(x) for x in xs])
        ax.set_xlabel(p)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean over the other dimensions")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{method}: how each hyperparameter moves efficacy and utility")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap(method: str, x: str, y: str, table: dict[tuple[Any, Any], float], path: Path) -> None:
    """Mean trade-off score over two hyperparameters (means over seeds and any other dimension)."""
    xs = sorted({k[0] for k in table})
    ys = sorted({k[1] for k in table})
    grid = [[table.get((xv, yv), float("nan")) for xv in xs] for yv in ys]
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 3, 0.9 * len(ys) + 2.2))
    image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, "-" if value != value else f"{value:.2f}", ha="center", va="center", color="w", fontsize=9)
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" if isinstance(v, float) else str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{method}: mean trade-off score")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend a line/scatter plot, then write it and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
