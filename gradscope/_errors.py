"""The exception and warning types gradscope raises."""

from __future__ import annotations

import sys
import warnings

__all__ = [
    "GradientAssertionError",
    "GradscopeError",
    "GradscopeWarning",
    "ProblemFound",
    "StepMismatch",
    "UnknownParameterError",
    "warn_at_caller",
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


class ProblemFound(GradscopeError):
    """``watch(net, on_problem="raise")`` found an error at the end of a backward pass.

    ``finding`` is the :class:`gradscope.Finding`; the message is its text. Every ``.grad`` of
    that pass is fully written when this escapes ``loss.backward()``.
    """

    def __init__(self, message: str, finding: object) -> None:
        super().__init__(message)
        self.finding = finding


class GradscopeWarning(UserWarning):
    """Something gradscope noticed but did not raise for (for example an error inside a hook)."""


# modules whose frames are not the caller's: gradscope's own, and mutmut's trampolines, which
# stand between gradscope's functions under `make mutate`
_INSIDE = ("gradscope.", "mutmut.")


def warn_at_caller(message: str) -> None:
    """Warn with :class:`GradscopeWarning`, shown at the first line outside gradscope: the
    user's, however deep inside gradscope the warning was decided (a fixed ``stacklevel`` is
    right for one entry point only)."""
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and str(frame.f_globals.get("__name__")).startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(GradscopeWarning(message), stacklevel=level)
