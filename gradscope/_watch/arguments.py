"""``watch()``'s arguments, checked before anything is hooked: one clear error per bad value.

Each message names the argument, what was passed and what it takes. The model's own checks
(parameters on the meta device, no parameter matching ``include``/``exclude``) and the
optimizer's stay with the code that reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import describe

__all__ = ["KEEP_CHOICES", "check_arguments", "patterns"]

KEEP_CHOICES = ("last", "all", "none")


def check_arguments(
    module: object,
    *,
    keep: object,
    every: object,
    history: object,
    max_bytes: object,
    copy: object,
    tag_modules: object,
    scaler: Any,
) -> None:
    """Raise a :class:`GradscopeError` for the first argument of ``watch()`` that is wrong."""
    if not isinstance(module, nn.Module):
        raise GradscopeError(
            f"watch() takes an nn.Module, not {describe(module)}; "
            "pass the model whose parameters you want to watch, e.g. watch(net)"
        )
    if not isinstance(keep, str) or keep not in KEEP_CHOICES:
        raise GradscopeError(f"keep={keep!r} is not one of {', '.join(map(repr, KEEP_CHOICES))}")
    _positive(every, "every", "(record every N-th pass)")
    if history is not None:
        _positive(history, "history", "(the newest records kept), or None for no bound")
    if max_bytes is not None:
        _positive(max_bytes, "max_bytes", 'bytes of tensors keep="all" may hold, or None')
    for flag, value in (("copy", copy), ("tag_modules", tag_modules)):
        if not isinstance(value, bool):
            raise GradscopeError(f"{flag}= takes True or False, not {describe(value)}")
    if scaler is not None and not hasattr(scaler, "get_scale"):
        raise GradscopeError(f"scaler= takes a torch.amp.GradScaler, not {describe(scaler)}")


def _positive(value: object, name: str, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GradscopeError(f"{name}={value!r}: pass a positive int {what}")


def patterns(value: object, argument: str) -> list[str]:
    """``include=``/``exclude=``: one glob pattern or an iterable of them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, torch.Tensor) or not isinstance(value, Iterable):
        raise GradscopeError(
            f"{argument}= takes a glob pattern on parameter names or a list of them, such as "
            f"'fc*' or ['*.weight', 'head.*'], not {describe(value)}"
        )
    found = list(value)
    for item in found:
        if not isinstance(item, str):
            raise GradscopeError(
                f"{argument}= entries must be glob patterns (str), got {describe(item)} in "
                f"{argument}={found!r}"
            )
    return found
