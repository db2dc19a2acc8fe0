"""The exception and warning types gradscope raises."""

from __future__ import annotations

__all__ = [
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "StepMismatch",
    "UnknownParameterError",
]


class GradscopeError(Exception):
    """Base class of every error gradscope raises on purpose."""


class GradientAssertionError(GradscopeError, AssertionError):
    """A gradient property did not hold; pytest shows it as an ordinary assertion failure."""


class StepMismatch(GradscopeError, AssertionError):
    """An optimizer step did not match its reference or failed a structural check."""


class UnknownParameterError(GradscopeError, KeyError):
    """A parameter name that the watched module does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message and show its quotes
        return str(self.args[0]) if self.args else ""


class GradscopeWarning(UserWarning):
    """Something gradscope noticed but did not raise for (for example an error inside a hook)."""
