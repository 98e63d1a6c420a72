"""Unlearning methods: pure PyTorch objectives and optimizers behind one registry (no Ray, no files)."""

from methods.base import Batch, BatchPart, ForgetSample, Hyperparameters, StepEngine, UnlearningMethod
from methods.registry import (
    MethodConfigError,
    available_methods,
    build,
    hyperparameter_help,
    method_class,
    needs_reference,
    register,
    validate_hyperparameters,
)

__all__ = [
    "Batch",
    "BatchPart",
    "ForgetSample",
    "Hyperparameters",
    "MethodConfigError",
    "StepEngine",
    "UnlearningMethod",
    "available_methods",
    "build",
    "hyperparameter_help",
    "method_class",
    "needs_reference",
    "register",
    "validate_hyperparameters",
]
