"""Name -> method class registry, and `build`, the one way to make a method from its hyperparameters."""

from __future__ import annotations

import importlib
from typing import Any

import pydantic
import torch

from methods.base import UnlearningMethod

_REGISTRY: dict[str, type[UnlearningMethod]] = {}

# Modules that register methods on import; loaded the first time the registry is read.
_METHOD_MODULES = (
    "methods.ga",
    "methods.graddiff",
    "methods.npo",
    "methods.simnpo",
    "methods.idkpo",
    "methods.undial",
    "methods.ihl",
    "methods.soul",
    "methods.icu",
    "methods.ofmu",
)
_loaded = False


class MethodConfigError(ValueError):
    """An unknown method name or an invalid hyperparameter; the message is one line and names the problem."""


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator: make a method buildable by its `name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _METHOD_MODULES:
            importlib.import_module(module)
        _loaded = True


def available_methods() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[UnlearningMethod]:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodConfigError(
            f"unknown method {name!r}; valid choices: {', '.join(sorted(_REGISTRY))}"
        ) from None


def validate_hyperparameters(name: str, hparams: dict[str, Any] | None = None) -> pydantic.BaseModel:
    """Validate a method's hyperparameters without building it (config load time)."""
    cls = method_class(name)
    try:
        return cls.Hyperparameters(**(hparams or {}))
    except pydantic.ValidationError as err:
        raise MethodConfigError(f"method {name!r}: {_one_line(err)}") from None


def needs_reference(name: str, hparams: dict[str, Any] | None = None) -> bool:
    """Whether `build(name, **hparams)` needs a frozen reference model (so callers load one only when needed)."""
    return method_class(name).wants_reference(validate_hyperparameters(name, hparams))


def build(name: str, reference: torch.nn.Module | None = None, **hparams: Any) -> UnlearningMethod:
    """Build method `name` with `hparams` (paper defaults for the rest); `reference` is the frozen original model."""
    cls = method_class(name)
    validated = validate_hyperparameters(name, hparams)
    return cls(validated, reference=reference)


def _one_line(err: pydantic.ValidationError) -> str:
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "hyperparameters"
        value = e.get("input")
        shown = f" = {value!r}" if not isinstance(value, dict) else ""
        problems.append(f"hyperparameter {where!r}{shown}: {e['msg']}")
    return "; ".join(problems)


def hyperparameter_help(name: str) -> dict[str, tuple[Any, str]]:
    """Each hyperparameter's default and description, for `unlearn methods` and docs."""
    cls = method_class(name)
    return {
        field: (info.default, info.description or "")
        for field, info in cls.Hyperparameters.model_fields.items()
    }


