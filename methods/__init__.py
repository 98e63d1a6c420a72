"""Unlearning methods: pure PyTorch objectives and optimizers behind one registry (no Ray, no files).

`import methods` does not import torch: the registry, hyperparameters and profiles are torch-free, so configs and
the CLI can use them in milliseconds. The torch-side names (`UnlearningMethod`, `Batch`, ...) load on first access.

Import layers, bottom up: `spec` (data types) <- `registry` (name -> spec) <- `hyperparameters` and `catalog` (the
built-in methods, registered when `catalog` is imported, here) <- `base` and the losses (torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from methods import catalog  # noqa: F401  (importing it registers the built-in methods)
from methods.registry import (
    MethodConfigError,
    available_methods,
    build,
    hyperparameter_help,
    method_class,
    method_spec,
    needs_reference,
    profile,
    register,
    validate_hyperparameters,
)
from methods.spec import Hyperparameters, LoraAdapters, MethodProfile, MethodSpec

_TORCH_NAMES = ("Batch", "BatchPart", "ForgetSample", "StepEngine", "UnlearningMethod")


def __getattr__(name: str) -> Any:
    # PEP 562: the contract's torch types are imported from methods.base only when asked for.
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module("methods.base"), name)
    raise AttributeError(f"module 'methods' has no attribute {name!r}")


__all__ = [
    "Batch",
    "BatchPart",
    "ForgetSample",
    "Hyperparameters",
    "LoraAdapters",
    "MethodConfigError",
    "MethodProfile",
    "MethodSpec",
    "StepEngine",
    "UnlearningMethod",
    "available_methods",
    "build",
    "hyperparameter_help",
    "method_class",
    "method_spec",
    "needs_reference",
    "profile",
    "register",
    "validate_hyperparameters",
]
