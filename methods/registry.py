"""Name -> method registry, and `build`, the one way to make a method from its hyperparameters.

Everything here but `build` and `method_class` works without torch: names, hyperparameter validation and help,
and profiles come from each method's `MethodSpec`. A method's torch implementation is imported the first time it
is built.

The registry imports only the data types (`methods/spec.py`); the built-in methods (`methods/catalog.py`, which
looks SOUL's inner objective up here) register themselves when `methods` is imported, so the registry is filled
before any `methods.registry` import returns.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pydantic

from methods.spec import Hyperparameters, MethodProfile, MethodSpec

if TYPE_CHECKING:
    import torch

    from methods.base import UnlearningMethod

_REGISTRY: dict[str, MethodSpec] = {}  # filled by `register`: methods/catalog.py's BUILTIN, then outside methods


class MethodConfigError(ValueError):
    """An unknown method name or an invalid hyperparameter; the message is one line and names the problem."""


def register(spec: MethodSpec) -> MethodSpec:
    """Make a method buildable by `spec.name` (for methods defined outside this package)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"method name {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodConfigError(
            f"unknown method {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}"
        ) from None


def method_class(name: str) -> type[UnlearningMethod]:
    """The method's torch implementation (imports it, and torch, on first use)."""
    module, _, cls = method_spec(name).implementation.partition(":")
    return getattr(importlib.import_module(module), cls)


def validate_hyperparameters(name: str, hparams: dict[str, Any] | None = None) -> Hyperparameters:
    """Validate a method's hyperparameters without building it (config load time)."""
    spec = method_spec(name)
    if isinstance(hparams, spec.hyperparameters):
        return hparams
    try:
        return spec.hyperparameters(**(hparams or {}))
    except pydantic.ValidationError as err:
        raise MethodConfigError(f"method {name!r}: {_one_line(err)}") from None


def profile(name: str, hparams: dict[str, Any] | Hyperparameters | None = None) -> MethodProfile:
    """What method `name` with `hparams` needs from the loop (parts, reference, DeepSpeed, optimizer, memory flags),
    from its hyperparameters alone: no torch, no reference model, nothing built."""
    return method_spec(name).profile(validate_hyperparameters(name, hparams))


def needs_reference(name: str, hparams: dict[str, Any] | None = None) -> bool:
    """Whether `build(name, **hparams)` needs a frozen reference model (so callers load one only when needed)."""
    return profile(name, hparams).needs_reference


def build(name: str, reference: torch.nn.Module | None = None, **hparams: Any) -> UnlearningMethod:
    """Build method `name` with `hparams` (paper defaults for the rest); `reference` is the frozen original model."""
    validated = validate_hyperparameters(name, hparams)
    return method_class(name)(validated, reference=reference)


def _one_line(err: pydantic.ValidationError) -> str:
    problems = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a check across fields (OFMU's rho_max >= rho0): its message names them
            problems.append(message)
            continue
        where = ".".join(str(p) for p in e["loc"])
        value = e.get("input")
        shown = f" = {value!r}" if not isinstance(value, dict) else ""
        problems.append(f"hyperparameter {where!r}{shown}: {message}")
    return "; ".join(problems)


def hyperparameter_help(name: str) -> dict[str, tuple[Any, str]]:
    """Each hyperparameter's default and description, for `unlearn methods` and docs."""
    return {
        field: (info.get_default(call_default_factory=True), info.description or "")
        for field, info in method_spec(name).hyperparameters.model_fields.items()
    }
