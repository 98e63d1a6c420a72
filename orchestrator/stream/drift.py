"""Pure functions over a method's applied batches: drift, the resurgence matrix, latency figures.

`applied` is the ledger's applied batches in order, each with `after` (forget metrics by request seq, as strings:
JSON keys) and `utility`. Request j's column starts at the batch that applied it; `matrix[j][k]` is request j's
forget metric measured after the k-th applied batch (None before j was applied).
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def drift_series(utilities: Sequence[float | None], baseline: float | None) -> list[float | None]:
    """Change of model utility against the original model's, after each applied batch."""
    return [None if u is None or baseline is None else u - baseline for u in utilities]


def forget_matrix(applied: Sequence[dict[str, Any]], order: Sequence[int], metric: str) -> list[list[float | None]]:
    """rows: requests (by `order`, their seqs), columns: applied batches; `metric` of request j after batch k."""
    return [[(batch["after"].get(str(seq)) or {}).get(metric) for batch in applied] for seq in order]


def resurgence(matrix: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per request: the largest rise of its metric after it was applied, over its value right after (> 0: the
    forgotten knowledge came back); None for a request applied last."""
    out: list[float | None] = []
    for row in matrix:
        present = [(k, v) for k, v in enumerate(row) if v is not None]
        if len(present) < 2:
            out.append(None)
            continue
        first = present[0][1]
        out.append(max(v - first for _, v in present[1:]))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between order statistics; None for no values."""
    data = sorted(v for v in values if v is not None and math.isfinite(v))
    if not data:
        return None
    position = (len(data) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return data[low] + (data[high] - data[low]) * (position - low)
