"""From a `sweep:` section to trials: the cells of each method's space, and a trial's config overrides.

A *cell* is one point of a method's space, `{"method": "npo", "params": {"lr": 1e-4, "beta": 0.1},
"is_default": False}`; a trial is a cell and a seed. Grid cells are enumerated here, random cells drawn here (from a
fixed seed, so a sweep and its restart agree), and only Optuna's points come from Tune's search algorithm. Pure and
torch-free: the budget is checked at config load time with these same functions (`check_budget`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

import methods
from orchestrator.errors import ConfigError
from orchestrator.sweep.config import TRAIN_PARAMS, Dimension, SweepConfig

RANDOM_SEED = 20190  # the random-search draws; fixed so that a restored sweep re-draws the same cells


def method_defaults(sweep: SweepConfig, method: str, train_defaults: dict[str, Any] | None) -> dict[str, Any] | None:
    """The method's default value of each swept name: the paper's hyperparameter, the run's lr/epochs.

    `train_defaults`: the `lr` and `epochs` the base config would run this method with (its train section, else the
    method's recipe); None when unknown (at config load time), and then None is returned."""
    if train_defaults is None:
        return None
    paper = methods.validate_hyperparameters(method, sweep.methods[method].hparams).model_dump()
    return {p: (train_defaults[p] if p in TRAIN_PARAMS else paper[p]) for p in sweep.methods[method].space}


def method_cells(sweep: SweepConfig, method: str, train_defaults: dict[str, Any] | None = None) -> list[dict]:
    """The method's cells for grid and random search, with its default cell when `include_default` asks for it.

    Without `train_defaults` (config load time) the default cell is counted as if it were missing from the grid,
    so the budget check is an upper bound."""
    space = sweep.methods[method].space
    grid_names = [p for p, d in space.items() if d.kind == "grid"]
    grid = [dict(zip(grid_names, values)) for values in itertools.product(*(space[p].grid for p in grid_names))]
    if sweep.search == "grid":
        points = grid
    else:
        rng = np.random.default_rng([RANDOM_SEED, sorted(sweep.methods).index(method)])
        drawn = [p for p, d in space.items() if d.kind != "grid"]
        points = [{**g, **{p: _draw(space[p], p, rng) for p in drawn}} for g in grid for _ in range(sweep.num_samples)]
    cells = [{"method": method, "params": _typed(p), "is_default": False} for p in points]
    if sweep.include_default and sweep.search != "optuna":
        default = method_defaults(sweep, method, train_defaults)
        if default is None:
            cells.append({"method": method, "params": {}, "is_default": True})
        else:
            default = _typed(default)
            match = [c for c in cells if same_params(c["params"], default)]
            if match:
                match[0]["is_default"] = True
            else:
                cells.append({"method": method, "params": default, "is_default": True})
    return cells


def trial_count(sweep: SweepConfig, train_defaults: dict[str, dict[str, Any]]) -> int:
    """Trials the sweep runs (before early stopping), the default cells included; `train_defaults`: each
    method's effective lr and epochs (`driver.train_defaults`), which decide whether its default cell is new."""
    if sweep.search == "optuna":
        return len(sweep.methods) * sweep.num_samples * len(sweep.seeds)
    repeats = sweep.num_samples if sweep.search == "grid" else 1
    return sum(len(method_cells(sweep, m, train_defaults[m])) for m in sweep.methods) * len(sweep.seeds) * repeats


def check_budget(sweep: SweepConfig, train_defaults: dict[str, dict[str, Any]]) -> int:
    """The trial count; a ConfigError (one line) when it exceeds `sweep.budget`."""
    total = trial_count(sweep, train_defaults)
    if total > sweep.budget:
        raise ConfigError(f"sweep: {total} trials, more than sweep.budget={sweep.budget}; raise the budget or "
                          "shrink the spaces")
    return total


def longest_first(sweep: SweepConfig, cells: list[dict], train_defaults: dict[str, dict[str, Any]]) -> list[dict]:
    """The cells in the order trials are queued: the longest expected training first (epochs x passes per step: a
    forward and a backward, and one more forward where the method keeps a frozen reference model), ties in their
    given order. Longest-first keeps the last round short: the slot that finishes first then waits on a short trial,
    not on NPO at ten epochs. Only the order changes, never a trial's config or result."""

    def cost(cell: dict) -> float:
        method, params = cell["method"], cell["params"]
        epochs = params.get("epochs", train_defaults[method]["epochs"])
        hparams = {**sweep.methods[method].hparams, **{k: v for k, v in params.items() if k not in TRAIN_PARAMS}}
        return epochs * (3 if methods.needs_reference(method, hparams) else 2)

    return sorted(cells, key=cost, reverse=True)


def _draw(dim: Dimension, name: str, rng: np.random.Generator) -> Any:
    if dim.kind == "choice":
        return dim.choice[int(rng.integers(len(dim.choice)))]
    lo, hi = dim.uniform or dim.loguniform
    value = float(rng.uniform(lo, hi)) if dim.kind == "uniform" else float(math.exp(rng.uniform(math.log(lo),
                                                                                                   math.log(hi))))
    return max(1, round(value)) if name == "epochs" else value


def _typed(params: dict[str, Any]) -> dict[str, Any]:
    return {k: (int(v) if k == "epochs" else v) for k, v in params.items()}


def same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two cells' params are the same point: the same names, numbers equal up to float round-off (relative
    1e-9), anything else equal. How a method's default cell is recognised in its grid and among finished trials."""
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], (int, float)) and isinstance(b[k], (int, float))
        else a[k] == b[k] for k in a)


def optuna_space(sweep: SweepConfig, method: str) -> dict[str, Any]:
    """Tune's param space for one method's Optuna study (seed as a categorical dimension)."""
    from ray import tune

    def domain(dim: Dimension):
        if dim.kind == "choice":
            return tune.choice(dim.choice)
        lo, hi = dim.uniform or dim.loguniform
        return tune.uniform(lo, hi) if dim.kind == "uniform" else tune.loguniform(lo, hi)

    params = {p: domain(d) for p, d in sweep.methods[method].space.items()}
    return {"cell": {"method": method, "params": params, "is_default": False}, "seed": tune.choice(sweep.seeds)}


def optuna_start_points(sweep: SweepConfig, method: str, train_defaults: dict[str, Any]) -> list[dict]:
    """The default cell as Optuna's first point (tunability needs it), when `include_default` asks for it."""
    if not sweep.include_default:
        return []
    default = _typed(method_defaults(sweep, method, train_defaults))
    # OptunaSearch takes the points flattened the way it flattens the space ("cell/params/lr").
    return [{**{f"cell/params/{k}": v for k, v in default.items()}, "seed": sweep.seeds[0]}]


def trial_overrides(cell: dict[str, Any], seed: int, fixed_hparams: dict[str, Any]) -> dict[str, Any]:
    """The dotted config overrides (`ExperimentConfig.with_overrides`) of one trial: method, hparams, lr, epochs,
    seed. `epochs` arrives as a float from a continuous range and is rounded."""
    params = cell["params"]
    out: dict[str, Any] = {"method.name": cell["method"],
                           "method.hparams": {**fixed_hparams, **{k: v for k, v in params.items()
                                                                  if k not in TRAIN_PARAMS}},
                           "train.seed": int(seed)}
    if "lr" in params:
        out["train.lr"] = float(params["lr"])
    if "epochs" in params:
        out["train.epochs"] = max(1, int(round(params["epochs"])))
    return out
