"""``check_step``: check one optimizer step against its reference update rule.

A step pre-hook runs the reference just before ``optimizer.step()`` (or right after a closure
has made the gradients), from the live parameters, gradients and optimizer state; when the
``with`` block ends every parameter, and every state entry the rule keeps, is compared with
what the rule expected. The hooks hold the checker weakly and are removed when the block ends,
even on an exception.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .._errors import GradscopeError
from .._naming import ParamsLike, describe
from .arrays import Pool
from .batch import Plan
from .compare import judge
from .hooks import grads_after_closure, outermost, resolve_inputs
from .plan import expect
from .ranks import agree_across_ranks
from .shadow import Shadow
from .step_report import StepReport, merge

__all__ = ["check_step", "shadow_of"]


def shadow_of(shadow: object, caller: str) -> Shadow | None:
    """``shadow=`` as a :class:`Shadow` (a new one for True), or None for False."""
    if isinstance(shadow, Shadow):
        return shadow
    if shadow is True:
        return Shadow()
    if shadow is False:
        return None
    raise GradscopeError(
        f"{caller}(shadow={describe(shadow)}): pass True (check the optimizer state too), "
        f"False (parameters only) or a gradscope.Shadow kept across steps"
    )


def _pre_hook(
    ref: weakref.ref[_StepCheck],
    index: int,
    optimizer: torch.optim.Optimizer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    check = ref()
    if check is None or not outermost(optimizer):
        return None
    return check._before_step(index, args, kwargs)


class _StepCheck:
    """The context manager returned by :func:`check_step`."""

    def __init__(
        self,
        optimizer: object,
        params: ParamsLike | None,
        reference: Callable[..., Any] | None,
        manual: bool,
        shadow: bool | Shadow,
        values: bool,
    ) -> None:
        self._inputs = resolve_inputs(
            optimizer, params, reference, values=values, caller="check_step"
        )
        self._shadow = shadow_of(shadow, "check_step")
        self._manual = manual
        self._step = 0 if self._shadow is None else self._shadow.steps
        self._report = StepReport(optimizer=self._inputs.label, step=self._step)
        count = len(self._inputs.optimizers)
        self._plans: list[Plan | None] = [None] * count
        self._calls = [0] * count
        self._handles: list[RemovableHandle] = []

    def _plan(self, index: int) -> None:
        self._plans[index] = expect(
            self._inputs.optimizers,
            index,
            self._inputs.names,
            self._inputs.rules[index],
            step=self._step,
            shadow=self._shadow,
            pool=self._pool(index),
        )

    def _pool(self, index: int) -> Pool | None:
        if self._shadow is None:
            return None
        return self._shadow.pool(self._inputs.optimizers[index])

    def _before_step(
        self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        self._calls[index] += 1
        if self._manual or self._calls[index] > 1:
            return None
        wrapped = grads_after_closure(functools.partial(self._plan, index), args, kwargs)
        if wrapped is None:
            self._plan(index)
        return wrapped

    def __enter__(self) -> StepReport:
        if self._manual:
            for index in range(len(self._inputs.optimizers)):
                self._plan(index)
        me = weakref.ref(self)
        self._handles = [
            opt.register_step_pre_hook(functools.partial(_pre_hook, me, index))
            for index, opt in enumerate(self._inputs.optimizers)
        ]
        return self._report

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        plans, self._plans = self._plans, [None] * len(self._plans)
        if exc_type is not None:
            for index in range(len(plans)):
                pool = self._pool(index)
                if pool is not None:
                    pool.release()
            return
        outcomes = []
        several = len(self._inputs.optimizers) > 1
        others = self._inputs.label.replace(" + ", ", ") if several else ""
        for index, opt in enumerate(self._inputs.optimizers):
            name, calls, plan = type(opt).__name__, self._calls[index], plans[index]
            if self._manual and calls:
                raise GradscopeError(
                    f"check_step(manual=True) expects the block to update the parameters by "
                    f"hand, but {name}.step() ran {calls} time(s) inside it; drop manual=True "
                    f"to check optimizer.step()"
                )
            if plan is None:
                raise GradscopeError(
                    f"the check_step block never called {name}.step(), so there is no step to "
                    f"check; call optimizer.step() inside the block (every optimizer given), "
                    f"or pass manual=True if the block updates the parameters by hand"
                )
            try:
                outcome = judge(
                    plan,
                    opt,
                    step=self._step,
                    shadow=self._shadow,
                    check_state=self._shadow is not None and not self._manual,
                    others=others,
                )
            finally:
                pool = self._pool(index)
                if pool is not None:
                    pool.release()
            outcome.notes[:0] = plan.notes
            if calls > 1:
                outcome.problems.append(
                    f"{name}.step() ran {calls} times inside check_step, which checks one "
                    f"step from the state before the first; was the step applied twice?"
                )
            outcomes.append(outcome)
        references = [None if r is None else r.text for r in self._inputs.rules]
        merge(self._report, outcomes, references)
        agree_across_ranks(self._report, self._inputs.optimizers)  # FSDP2: collective
        if self._shadow is not None:
            self._shadow.steps += 1


def check_step(
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    *,
    params: ParamsLike | None = None,
    reference: Callable[..., Any] | None = None,
    manual: bool = False,
    shadow: bool | Shadow = True,
    values: bool = True,
) -> _StepCheck:
    """Check the ``optimizer.step()`` inside the ``with`` block against its reference rule.

    Built in for SGD, Adam, AdamW, NAdam, RAdam, Adamax, SparseAdam, RMSprop, Adagrad,
    Adadelta, Rprop and ASGD (and their subclasses); ``reference=rule`` takes
    ``rule(param, grad, state, group)`` returning the new param, or ``(new param, new state)``,
    for any other optimizer. Without either it raises, unless ``values=False`` asks for the
    structural checks only. ``shadow=True`` also compares the optimizer's state entries
    (``exp_avg``, ``momentum_buffer``, ``step``...) with the rule's; pass a
    :class:`gradscope.Shadow` to keep that memory across consecutive checks. ``params=`` (a
    module, a name -> tensor mapping, or tensors or (name, tensor) pairs) names the parameters
    and finds those missing from the optimizer; pass a list of optimizers to check them
    together (SparseAdam + Adam).
    ``manual=True`` checks a block that updates the parameters by hand against the update
    the optimizer would make (the tutorial's loop against SGD).

    >>> import torch, gradscope
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.01)
    >>> net(torch.ones(1, 3)).sum().backward()
    >>> with gradscope.check_step(opt, params=net) as report:
    ...     opt.step()
    >>> report.ok
    True
    """
    return _StepCheck(optimizer, params, reference, manual, shadow, values)
