"""Evaluation of an (un)learned model: TOFU, MUSE-style memorisation and privacy, and fluency metrics.

`evaluate_model` is the one entry; the modules beside it each hold one family of metrics as plain functions.
"""

from orchestrator.evaluation.evaluate import EvalReport, EvalSettings, SplitMetrics, evaluate_model

__all__ = ["EvalReport", "EvalSettings", "SplitMetrics", "evaluate_model"]
