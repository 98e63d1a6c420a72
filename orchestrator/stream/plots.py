"""The stream's figures (matplotlib, Agg): drift against request index, one line per method; the resurgence map."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drift(methods: dict[str, dict[str, Any]], path: Path) -> Path | None:
    if not methods:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, s in methods.items():
        values = [d for d in s["drift"]]
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("applied request (batch) index")
    ax.set_ylabel("model utility - original")
    ax.set_title("Drift under sequential requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_resurgence(name: str, s: dict[str, Any], path: Path) -> Path | None:
    matrix = s["matrix"]["rouge_l"]
    if not matrix or not matrix[0]:
        return None
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * values.shape[1], 1.2 + 0.35 * values.shape[0]))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(k + 1) for k in range(values.shape[1])])
    ax.set_yticks(range(values.shape[0]), s["matrix"]["requests"], fontsize=7)
    ax.set_xlabel("after applied batch k")
    ax.set_ylabel("request j")
    ax.set_title(f"{name}: forget ROUGE-L of j after k")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
