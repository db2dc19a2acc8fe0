"""``assert_params_updated``: run one training step and name the parameters that did not move."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

from .._errors import GradscopeError
from .._naming import ParamsLike, describe
from ._common import Failure, as_names, fail, fmt_num, index_of, plural, select, shape_of
from ._grads import grad_of

__all__ = ["assert_params_updated"]

T = TypeVar("T")


def _changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Element mask of changes; a NaN that stays NaN is not a change."""
    same = (before == after) | (torch.isnan(before) & torch.isnan(after))
    return ~same


def _all_equal(numel: int) -> str:
    return "its one element is the same" if numel == 1 else f"all {numel} elements equal"


def _grad_note(param: torch.Tensor) -> str:
    grad = grad_of(param)
    if grad is None:
        return "its .grad is None (not connected to the loss, or zero_grad after backward?)"
    if not bool(grad.ne(0).any()):
        return "its .grad is all zeros"
    return "its .grad is non-zero, so the optimizer skipped it (is it in the optimizer?) or lr=0"


def assert_params_updated(
    module: ParamsLike,
    step: Callable[[], T],
    *,
    ignore: str | Iterable[str] | None = (),
    frozen: str | Iterable[str] | None = (),
    msg: str | None = None,
) -> T:
    """Run ``step()`` once; every trainable parameter must change and every frozen one must not.

    Frozen parameters are those named in ``frozen=`` (names or globs) plus those with
    ``requires_grad=False``. Returns what ``step`` returned (a loss, say).

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> def step():
    ...     opt.zero_grad()
    ...     net(torch.ones(2, 3)).sum().backward()
    ...     opt.step()
    >>> gt.assert_params_updated(net, step)
    """
    __tracebackhide__ = True
    function = "assert_params_updated"
    if not callable(step):
        raise GradscopeError(
            f"{function}: step= must be a callable that runs one training step (zero_grad, "
            f"forward, backward, optimizer.step()), not {describe(step)}; pass the function "
            "itself, not its result (step, not step())"
        )
    names = as_names(module, function=function)
    skipped = select(names, ignore, argument="ignore", function=function)
    must_stay = select(names, frozen, argument="frozen", function=function)
    params = {n: p for n, p in names.params.items() if n not in skipped}
    must_stay |= {n for n, p in params.items() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    result = step()
    failures: list[Failure] = []
    stuck = moved = 0
    for name, param in params.items():
        after = param.detach()
        if after.shape != before[name].shape:
            failures.append(
                Failure(
                    name,
                    shape_of(after),
                    f"changed shape from {shape_of(before[name])}; was the parameter replaced?",
                )
            )
            continue
        mask = _changed(before[name], after)
        count = int(mask.sum())
        if name in must_stay and count:
            moved += 1
            # both sides are widened, so that either one is enough: float64 promotes the other
            wide = after.to(torch.float64)  # pragma: no mutate (before is widened below too)
            delta = (wide - before[name].to(torch.float64)).abs()  # pragma: no mutate (see above)
            delta = torch.where(mask, delta, torch.zeros_like(delta))
            i = int(torch.nan_to_num(delta, nan=math.inf).reshape(-1).argmax())
            why = "requires_grad=False" if not param.requires_grad else "frozen= lists it"
            failures.append(
                Failure(
                    name,
                    shape_of(after),
                    f"changed though it is frozen ({why}): {count} of "
                    f"{plural(after.numel(), 'element')}, "
                    f"largest change {fmt_num(float(delta.reshape(-1)[i]))} at index "
                    f"{index_of(after.shape, i)}",
                )
            )
        elif name not in must_stay and count == 0:
            stuck += 1
            failures.append(
                Failure(
                    name,
                    shape_of(after),
                    f"did not change ({_all_equal(after.numel())}); {_grad_note(param)}",
                )
            )
    if failures:
        hints = []
        if stuck:
            hints.append(
                "a parameter that does not move has no gradient, is missing from the "
                "optimizer's param groups, or has lr=0; pass ignore=[...] for ones that are "
                "unused on purpose"
            )
        if moved:
            hints.append(
                "a frozen parameter that moves is in the optimizer with weight decay or "
                "momentum from earlier steps, or is updated by hand; leave it out of the "
                "optimizer"
            )
        raise fail(
            function,
            f"{len(failures)} of {plural(len(params), 'parameter')} not updated as expected "
            f"({stuck} unchanged, {moved} frozen but changed)",
            failures,
            "; ".join(hints) or "a parameter was replaced during the step",
            msg,
        )
    return result
