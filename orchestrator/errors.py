"""The orchestrator's own error types, in a module that imports nothing, so any layer can raise them.

`orchestrator.config` re-exports `ConfigError` (`from orchestrator.config import ConfigError` still works); modules
it depends on, such as the sweep's space (`orchestrator/sweep/space.py`, the budget check), import it from here, so
that raising it does not tie them back to the experiment config in an import circle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config that cannot run; the message is one line naming the problem."""


class RunError(RuntimeError):
    """The unlearning run itself failed (a worker error); the message says where to look."""


def last_line(err: BaseException) -> str:
    """The last line of an error's message (Ray wraps a worker's exception in its own traceback text)."""
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
