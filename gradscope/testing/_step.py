"""``assert_step_matches_reference``: one optimizer step against its reference update rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from .._errors import GradscopeError
from .._naming import ParamsLike, describe, named_parameters
from .._optim.check import check_step
from ._common import Failure, fail, fmt_num, plural

__all__ = ["assert_step_matches_reference"]

T = TypeVar("T")


def _shapes(
    optimizer: torch.optim.Optimizer, params: ParamsLike | None
) -> dict[str, tuple[int, ...]]:
    """Shapes under the names the step report uses (module names, else ``group{g}.param{i}``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for g, group in enumerate(optimizer.param_groups):
        for i, tensor in enumerate(group["params"]):
            shapes[f"group{g}.param{i}"] = tuple(int(s) for s in tensor.shape)
    if params is not None:
        for name, tensor in named_parameters(params).params.items():
            shapes[name] = tuple(int(s) for s in tensor.shape)
    return shapes


def assert_step_matches_reference(
    optimizer: torch.optim.Optimizer,
    step: Callable[[], T],
    params: ParamsLike | None = None,
    *,
    reference: Callable[..., torch.Tensor] | None = None,
    msg: str | None = None,
) -> T:
    """Run ``step()`` (which calls ``optimizer.step()`` once) and check the update it made.

    Wraps :func:`gradscope.check_step`: every parameter, and every optimizer state entry, must
    move as the documented rule of the optimizer (every torch.optim family check_step has a
    rule for, or ``reference=rule``) says; an optimizer without a rule is an error, not a pass.
    ``params=`` (the model) names the parameters and finds the ones missing from the
    optimizer. A step too small to check (every parameter's update within the tolerance, so a
    wrong step would match too) fails as well. Returns what ``step`` returned.

    >>> import gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.01)
    >>> def step():
    ...     opt.zero_grad()
    ...     net(torch.ones(2, 3)).sum().backward()
    ...     opt.step()
    >>> gt.assert_step_matches_reference(opt, step, params=net)
    """
    __tracebackhide__ = True
    function = "assert_step_matches_reference"
    if not callable(step):
        raise GradscopeError(
            f"{function}: step= must be a callable that runs one training step ending in "
            f"optimizer.step(), not {describe(step)}; pass the function itself (step, not step())"
        )
    # resolved once: a generator such as net.parameters() can be read only once
    resolved = None if params is None else dict(named_parameters(params).params)
    with check_step(optimizer, params=resolved, reference=reference) as report:
        result = step()
    moved = [check for check in report.params if check.max_update]
    unchecked = report.ok and moved and all(check.unresolved for check in moved)
    if report.ok and not unchecked:
        return result
    shapes = _shapes(optimizer, resolved)  # only a failure names shapes
    if unchecked:
        raise fail(
            function,
            f"{type(optimizer).__name__}.step() could not be checked against "
            f"{report.reference}: its reference moves every parameter by no more than the "
            f"tolerance, so a wrong step (skipped, doubled) would match too",
            [
                Failure(
                    check.name,
                    shapes.get(check.name),
                    f"largest update {fmt_num(check.max_update)}, "
                    f"tolerance {fmt_num(check.tolerance)}",
                )
                for check in moved
            ],
            "make the step larger than rounding in the test: a larger lr or larger gradients, "
            "or float64 parameters (a tolerance about 5e8 times smaller)",
            msg,
        )
    failures = [Failure("(whole step)", None, text) for text in report.problems]
    for check in report.failures:
        numbers = ""
        if check.max_abs_diff is not None:
            numbers = (
                f": max abs diff {fmt_num(check.max_abs_diff)} "
                f"(tolerance {fmt_num(check.tolerance)}), "
                f"{fmt_num(check.max_rel_diff)} of the step"
            )
        where = "in no param group" if check.group is None else f"param group {check.group}"
        failures.append(
            Failure(
                check.name,
                shapes.get(check.name),
                f"{'; '.join(check.reasons)} ({where}){numbers}",  # each FAIL has a reason
            )
        )
    raise fail(
        function,
        f"{type(optimizer).__name__}.step() does not match {report.reference}: "
        f"{len(report.failures)} of {plural(len(report.params), 'parameter')} failed"
        + (f", {plural(len(report.problems), 'step-wide problem')}" if report.problems else ""),
        failures,
        "the reasons above guess the mistake; common ones: a parameter in no param group, "
        "grads changed between backward and step (clipping, scaling), a second step() call, "
        "or an optimizer subclass with its own update (pass reference=); "
        "print(report) from gradscope.check_step shows the full table",
        msg,
    )
