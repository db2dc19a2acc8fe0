"""What every ``gradscope.testing`` assertion shares: argument checks, element indices, the message.

A message lists every failure at once, one line per offending tensor, then one ``Hint:`` line::

    assert_grads_finite: 1 of 10 parameters has a non-finite gradient
      fc3.bias (10,): 2 NaN, 0 Inf of 10 elements; first at index (3,) = nan
    Hint: ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .._errors import GradientAssertionError, GradscopeError, UnknownParameterError
from .._naming import (
    ParamNames,
    ParamsLike,
    describe,
    named_parameters,
    reject_meta,
    suggest,
)

__all__ = [
    "Failure",
    "as_names",
    "fail",
    "fmt_num",
    "index_of",
    "plural",
    "select",
    "shape_of",
    "worst_abs",
]


@dataclass(frozen=True)
class Failure:
    """One offending tensor: its name and shape, then what is wrong with it (numbers included)."""

    name: str
    shape: tuple[int, ...] | None
    problem: str

    def line(self) -> str:
        shape = "" if self.shape is None else " " + shape_text(self.shape)
        return f"  {self.name}{shape}: {self.problem}"


def shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def shape_of(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def fmt_num(x: float | complex | None) -> str:
    """A number short enough for a one-line message but exact enough to compare (4 digits);
    ``-`` for a number that was not measured.

    >>> fmt_num(0.000123456), fmt_num(float("nan")), fmt_num(None)
    ('0.0001235', 'nan', '-')
    """
    return "-" if x is None else f"{x:.4g}"


def index_of(shape: Sequence[int], flat: int) -> tuple[int, ...]:
    """The multi-dimensional index of element ``flat`` of a row-major tensor of ``shape``."""
    index: list[int] = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def worst_abs(t: torch.Tensor) -> tuple[float | complex, tuple[int, ...]]:
    """The element of largest magnitude (its value, signed or complex) and its index; NaN counts
    as the largest."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return 0.0, ()
    nan = torch.isnan(flat)
    i = int(nan.nonzero()[0, 0]) if bool(nan.any()) else int(flat.abs().argmax())
    value = complex(flat[i]) if flat.is_complex() else float(flat[i])
    return value, index_of(t.shape, i)


def as_names(module: object, *, function: str) -> ParamNames:
    """Resolve a module, a name -> tensor mapping or an iterable of tensors or (name, tensor)
    pairs (see ``named_parameters``); an empty one, a bare tensor or meta tensors are errors."""
    if isinstance(module, torch.Tensor):
        raise GradscopeError(
            f"{function}: expected an nn.Module or a mapping of name -> parameter, got "
            f"{describe(module)}; pass the model (e.g. {function}(net)) or "
            f"dict(net.named_parameters()), or {{'x': x}} to check a single tensor"
        )
    try:
        names = named_parameters(cast(ParamsLike, module), argument="module")
    except GradscopeError as err:
        raise GradscopeError(f"{function}: {err}") from None
    reject_meta(names.params, function)
    if not names.params:
        raise GradscopeError(
            f"{function}: {describe(module)} has no parameters, so there is nothing to check; "
            "pass the model whose gradients you want to test"
        )
    return names


def _as_patterns(names: str | Iterable[str] | None, argument: str, function: str) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    if isinstance(names, torch.Tensor) or not isinstance(names, Iterable):
        raise GradscopeError(
            f"{function}: {argument}= takes parameter names or glob patterns such as "
            f"['fc3.bias', '*.bias'], not {describe(names)}"
        )
    out = list(names)
    for item in out:
        if not isinstance(item, str):
            raise GradscopeError(
                f"{function}: {argument}= entries must be parameter names (str), "
                f"got {describe(item)}"
            )
    return out


def select(
    names: ParamNames,
    patterns: str | Iterable[str] | None,
    *,
    argument: str,
    function: str,
) -> set[str]:
    """The canonical names matched by ``patterns`` (names, aliases or globs); typos raise.

    A pattern equal to a name matches that name (``"[0]"``, the first of a list of tensors, is
    not read as a glob character class).

    A pattern that matches nothing is almost always a typo that would silently weaken the test,
    so it raises :class:`UnknownParameterError` with the closest names.
    """
    chosen: set[str] = set()
    for pattern in _as_patterns(patterns, argument, function):
        # a name matches itself before it is read as a glob: "[0]" (the first tensor of a list)
        # would otherwise be the glob class that matches "0"
        matched = [
            alias
            for alias in names.canonical
            if alias == pattern or fnmatch.fnmatchcase(alias, pattern)
        ]
        if not matched:
            raise UnknownParameterError(
                f"{function}: {argument}= names {pattern!r}, which matches no parameter"
                f"{suggest(pattern, names.canonical)}"
            )
        chosen.update(names.canonical[alias] for alias in matched)
    return chosen


def fail(
    function: str,
    header: str,
    failures: Sequence[Failure],
    hint: str,
    msg: str | None,
) -> GradientAssertionError:
    """The error to raise: ``msg`` first if given, the header, one line per failure, the hint."""
    lines = [f"{msg}" if msg else None, f"{function}: {header}"]
    lines += [f.line() for f in failures]
    lines.append(f"Hint: {hint}")
    return GradientAssertionError("\n".join(line for line in lines if line is not None))


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"
