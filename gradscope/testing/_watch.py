"""``assert_watch_finite``: every backward pass a watch recorded left finite gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._errors import GradscopeError
from .._naming import describe
from ._common import Failure, fail, index_of, plural

if TYPE_CHECKING:
    from .._watch.records import GradRecord
    from .._watch.watch import Watch

__all__ = ["assert_watch_finite"]


def _first_index(record: GradRecord) -> str:
    if record.modified:  # changed in place since (GradScaler.unscale_, clipping): value gone
        return ""
    tensor = record.after if record.accumulated else record.delta
    if tensor is None:  # the tensors of older passes are dropped under keep="last"
        return ""
    bad = (~torch.isfinite(tensor)).reshape(-1).nonzero()
    if bad.numel() == 0:
        return ""
    i = int(bad[0, 0])
    return f"; first at index {index_of(tensor.shape, i)} = {float(tensor.reshape(-1)[i])}"


def assert_watch_finite(watch: Watch, *, msg: str | None = None) -> None:
    """Every backward pass ``watch`` recorded left NaN- and Inf-free gradients.

    Names each parameter with the first pass where its gradient stopped being finite. The
    ``gradscope_finite`` pytest marker runs this on every watch of the ``gradscope_watch``
    fixture after the test.

    >>> import gradscope, gradscope.testing as gt
    >>> net = torch.nn.Linear(3, 1)
    >>> with gradscope.watch(net) as w:
    ...     net(torch.ones(2, 3)).sum().backward()
    >>> gt.assert_watch_finite(w)
    """
    __tracebackhide__ = True
    function = "assert_watch_finite"
    from .._watch.watch import Watch

    if not isinstance(watch, Watch):
        raise GradscopeError(
            f"{function}: expected the object gradscope.watch(model) returned, got "
            f"{describe(watch)}; for a module's current gradients use assert_grads_finite(model)"
        )
    records = watch.records
    first_bad: dict[str, tuple[int, GradRecord]] = {}
    for record in records:
        for name, grad in record.grads.items():
            if name not in first_bad and not grad.stats.finite:
                first_bad[name] = (record.index, grad)
    if not first_bad:
        return
    order = list(dict.fromkeys(records[-1].aliases.values())) if records else []
    ranked = sorted(first_bad, key=lambda n: order.index(n) if n in order else len(order))
    failures = []
    for name in ranked:
        index, grad = first_bad[name]
        stats = grad.stats
        failures.append(
            Failure(
                name,
                tuple(int(s) for s in grad.shape),
                f"non-finite from backward pass {index} on: {stats.nan} NaN, {stats.inf} Inf of "
                f"{plural(stats.numel, 'element')}{_first_index(grad)}",
            )
        )
    first = min(index for index, _ in first_bad.values())
    raise fail(
        function,
        f"{plural(len(first_bad), 'parameter')} got non-finite gradients in the "
        f"{plural(len(records), 'recorded backward pass', 'recorded backward passes')} "
        f"(first in pass {first})",
        failures,
        "look at the first bad pass (its record in watch.records); NaN/Inf usually start in "
        "the forward pass (log or sqrt of 0, division by 0, exp overflow) or after a too-large "
        "step; gradscope.graph(loss, params=net, grads=True).first_nonfinite names the op",
        msg,
    )
