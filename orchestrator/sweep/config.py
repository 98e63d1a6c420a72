"""The `sweep:` section of an experiment YAML: which methods, over which hyperparameters, how many trials.

```yaml
sweep:
  methods:
    undial:
      space:
        lr: {grid: [1.0e-4, 3.0e-4]}      # `lr` and `epochs` are train.lr / train.epochs ...
        gamma: {grid: [3, 10, 30]}         # ... every other name is one of the method's hyperparameters
      hparams: {}                          # fixed hyperparameters of the method for every trial
  search: grid                             # grid | random | optuna (TPE, two objectives: efficacy and utility)
  seeds: [0, 1]                            # train.seed: a dimension of its own, crossed with every cell
  budget: 64                               # at most this many trials; a bigger grid is refused at load time
```

A bad hyperparameter name or value is refused when the config loads (one line, naming method, key and value),
before Ray or torch are imported. Torch-free: the CLI validates a sweep in milliseconds.

This module is the bottom of the sweep package: it imports neither `orchestrator.config` (which imports it) nor
`space.py` (which reads these models); the trial count and the budget check are `space.trial_count` and
`space.check_budget`.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

import methods

TRAIN_PARAMS = ("lr", "epochs")  # names in a space that mean train.<name>; every other name is a method hparam


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Section):
    """One hyperparameter's range: exactly one of `grid`, `choice`, `uniform`, `loguniform`."""

    grid: list[Any] | None = Field(None, min_length=1, description="Values tried in turn (a grid dimension).")
    choice: list[Any] | None = Field(None, min_length=1, description="Values drawn from (random / optuna).")
    uniform: tuple[float, float] | None = Field(None, description="[lo, hi] drawn uniformly (random / optuna).")
    loguniform: tuple[float, float] | None = Field(None, description="[lo, hi] drawn log-uniformly, lo > 0.")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> "Dimension":
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        for kind in ("uniform", "loguniform"):
            bounds = getattr(self, kind)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind} needs [lo, hi] with lo < hi, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs lo > 0, got {list(self.loguniform)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def values(self) -> list[Any]:
        """The finite values of a grid or choice; the bounds of a range (for validation)."""
        return list(getattr(self, self.kind))


class MethodSweep(_Section):
    """One method's search space and the hyperparameters it keeps fixed."""

    space: dict[str, Dimension] = Field(min_length=1, description="Hyperparameter -> its range.")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Fixed method hyperparameters.")


class AshaConfig(_Section):
    """ASHA early stopping (Li et al. 2020) on a metric every trial reports while it trains."""

    metric: str = Field("loss", description="Intermediate metric the rungs compare (the method's training loss).")
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher `metric` is better.")
    grace_period: int = Field(10, gt=0, description="Steps every trial runs before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="Share kept at each rung is 1 / reduction_factor.")
    max_t: int = Field(10_000, gt=0, description="ASHA's last rung, in steps: keep it above the longest trial's "
                       "steps, or every trial is stopped at its last step, before its evaluation.")


class SweepConfig(_Section):
    """A hyperparameter sweep: Ray Tune trials, each one Ray Train run of `run_unlearning`."""

    methods: dict[str, MethodSweep] = Field(min_length=1, description="Method name -> its search space.")
    search: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every cell of every space; random: `num_samples` draws per method (grid "
        "dimensions crossed with them); optuna: TPE with two objectives (efficacy, utility), per method.")
    num_samples: int = Field(1, gt=0, description="random/optuna: trials per method and seed; grid: repeats.")
    seeds: list[int] = Field([0], min_length=1, description="train.seed values, crossed with every cell.")
    budget: int = Field(64, gt=0, description="Most trials the sweep may run; a bigger sweep is refused.")
    include_default: bool = Field(
        True, description="Add each method's default cell (paper hyperparameters, recipe lr/epochs) to a grid "
        "that lacks it: tunability (best minus default) needs it.")
    max_concurrent: int | None = Field(
        None, gt=0, description="Trials at once; default: the cluster's CPUs (GPUs with train.use_gpu) divided by "
        "what one trial's workers take.")
    cpus_per_worker: int = Field(1, gt=0, description="train.cpus_per_worker of every trial when train leaves it "
                                 "unset (a trial's driver itself takes no CPU).")
    efficacy: Literal["forget_rouge_l", "forget_quality", "retain_model", "attacked"] = Field(
        "forget_rouge_l", description="The forget efficacy the robustness figures use: 1 - forget ROUGE-L / the "
        "target's, TOFU forget quality (KS-test p-value), forget ROUGE-L against the retain model's (1 at its "
        "level, less on either side: over-unlearning costs score), or attacked: 1 - forget ROUGE-L / the target's "
        "under the strongest recovery attack (needs sweep.attacks). Every front is always reported.")
    attacks: bool = Field(False, description="Run the recovery attacks (eval.attacks, or all three at their "
                          "defaults where the config has none) after every trial: adds the attacked efficacy and "
                          "the worst recovery to every trial, front and the robustness table.")
    tolerance: float = Field(0.05, gt=0, description="A cell is 'near the best' when its mean trade-off score is "
                             "within this (absolute) of the method's best cell.")
    asha: AshaConfig | None = Field(None, description="Early stopping; null: every trial runs to the end.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop starting trials after this long (per study).")
    trial_workers: Literal["auto", "resident", "per_trial"] = Field(
        "auto", description="per_trial: each trial builds its own TorchTrainer (Ray Train V2's Tune pattern: fresh "
        "worker processes per trial, 7-12 s of start on a small machine); resident: each concurrent slot keeps one "
        "Ray Train worker group that serves its trials one after another (orchestrator/run/resident.py; a DeepSpeed "
        "trial builds its engine and closes it); auto: resident unless ASHA (a stopped trial must take its Ray Train "
        "run down) or checkpoints of DeepSpeed trials (train.checkpoint_every_epochs, max_failures) ask for "
        "per_trial.")
    keep_models: bool = Field(False, description="Keep every trial's unlearned model (7B: 13 GB each).")
    output_dir: str | None = Field(None, description="Sweep folder; default runs/<name>-sweep.")

    @pydantic.model_validator(mode="after")
    def _valid_spaces(self) -> "SweepConfig":
        for name, sweep in self.methods.items():
            methods.validate_hyperparameters(name, sweep.hparams)  # MethodConfigError: a ValueError, one line
            for param, dim in sweep.space.items():
                _check_dimension(name, sweep.hparams, param, dim, self.search)
            overlap = set(sweep.space) & set(sweep.hparams)
            if overlap:
                raise ValueError(f"sweep.methods.{name}: {sorted(overlap)} both fixed in hparams and swept in space")
        if self.trial_workers == "resident" and self.asha is not None:
            raise ValueError("sweep.trial_workers=resident cannot run with sweep.asha: a trial ASHA stops must take "
                             "its Ray Train run down with it; use trial_workers: per_trial (or auto)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"sweep.seeds has repeats: {self.seeds}")
        return self

    def runs_resident(self, sharded_checkpoints: bool = False) -> bool:
        """Whether trials run on resident worker groups, one per slot (`trial_workers`, with `auto` resolved).
        `sharded_checkpoints`: the trials checkpoint a DeepSpeed engine, which only a TorchTrainer of their own
        does (`orchestrator/run/resident.py`)."""
        if self.trial_workers == "auto":
            return self.asha is None and not sharded_checkpoints
        return self.trial_workers == "resident"


def _check_dimension(method: str, fixed: dict[str, Any], param: str, dim: Dimension, search: str) -> None:
    where = f"sweep.methods.{method}.space.{param}"
    if search == "grid" and dim.kind in ("uniform", "loguniform", "choice"):
        raise ValueError(f"{where}: search 'grid' enumerates values; use grid: [...] (or search: random/optuna "
                         f"for {dim.kind})")
    if search == "optuna" and dim.kind == "grid":
        raise ValueError(f"{where}: search 'optuna' samples its own points; use choice: [...] instead of grid")
    if param in TRAIN_PARAMS:
        for value in dim.values():
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
                  and (param != "epochs" or float(value).is_integer()))
            if not ok:
                want = "a positive integer" if param == "epochs" else "a positive number"
                raise ValueError(f"{where} = {value!r}: train.{param} must be {want}")
        return
    fields = methods.method_spec(method).hyperparameters.model_fields
    if param not in fields:
        known = ", ".join([*TRAIN_PARAMS, *fields]) or "lr, epochs"
        raise ValueError(f"{where}: {method!r} has no hyperparameter {param!r}; valid: {known}")
    for value in dim.values():
        try:
            methods.validate_hyperparameters(method, {**fixed, param: value})
        except methods.MethodConfigError as err:
            raise ValueError(f"{where} = {value!r}: {err}") from None


# The embedded default sweep (`unlearn sweep` with no config; experiments/sweep_default.yaml spells it out): the
# embedded tiny problem; GA, NPO and UnDIAL each over two learning rates (its recipe's and one 3x away: lower for
# GA and NPO, whose recipe rate already erases the tiny model, higher for UnDIAL) and one knob of its own (GA: epochs;
# NPO: beta, paper 0.1; UnDIAL: gamma, default 10 and the top of open-unlearning's {3, 10, 30}), two seeds each:
# 12 cells, 24 trials, every method's default cell (paper hyperparameters, recipe lr/epochs) among them.
DEFAULT_SWEEP_EXPERIMENT: dict[str, Any] = {
    "name": "sweep-default",
    "sweep": {
        "methods": {
            "ga": {"space": {"lr": {"grid": [3.0e-5, 1.0e-4]}, "epochs": {"grid": [5, 10]}}},
            "npo": {"space": {"lr": {"grid": [3.0e-5, 1.0e-4]}, "beta": {"grid": [0.1, 0.5]}}},
            "undial": {"space": {"lr": {"grid": [1.0e-4, 3.0e-4]}, "gamma": {"grid": [10.0, 30.0]}}},
        },
        "search": "grid",
        "seeds": [0, 1],
        "budget": 24,
        "cpus_per_worker": 1,
        "tolerance": 0.05,
    },
}
