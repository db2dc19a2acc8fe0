"""``check_step``: check one optimizer step against a reference update rule.

The parameters, gradients and optimizer state are copied by a step pre-hook just before
``optimizer.step()`` runs; when the ``with`` block ends every parameter is compared with what
the reference rule (see :mod:`gradscope._optim.references`) computes from those copies. The
hooks hold the checker through a weak reference and are removed when the block ends, even on an
exception.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._errors import GradscopeError
from .._naming import ParamNames, ParamsLike, describe, named_parameters, reject_meta
from .compare import Snapshot, compare, grads_after_closure, take_snapshot
from .references import Reference, builtin_reference
from .step_report import StepReport

__all__ = ["check_step", "resolve_inputs"]


def resolve_inputs(
    optimizer: object, params: ParamsLike | None, reference: Reference | None, *, caller: str
) -> tuple[torch.optim.Optimizer, ParamNames | None, tuple[str, Reference] | None]:
    """Validate the arguments shared by check_step and verify_optimizer."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = (
            "; that is the model: pass the optimizer first and the model as params="
            if isinstance(optimizer, nn.Module)
            else ""
        )
        raise GradscopeError(
            f"{caller}() takes a torch.optim.Optimizer, not {describe(optimizer)}{hint} "
            f"(e.g. {caller}(optimizer, params=net))"
        )
    if not any(len(group["params"]) for group in optimizer.param_groups):
        raise GradscopeError(
            f"{caller}(): {type(optimizer).__name__} has no parameters in any param group, so "
            f"there is no step to check; build it with the model's parameters, "
            f"e.g. torch.optim.SGD(net.parameters(), lr=0.01)"
        )
    names = None if params is None else named_parameters(params)
    groups = optimizer.param_groups
    tensors = {
        f"group{g}.param{i}": t for g, gr in enumerate(groups) for i, t in enumerate(gr["params"])
    }
    reject_meta(tensors, f"{caller}()")
    if reference is None:
        return optimizer, names, builtin_reference(optimizer)
    if not callable(reference):
        raise GradscopeError(
            f"{caller}(reference=...) takes a function (param, grad, state, group) -> new "
            f"param, not {describe(reference)}"
        )
    label = getattr(reference, "__qualname__", None) or repr(reference)
    return optimizer, names, (label, reference)


def _pre_hook(
    ref: weakref.ref[_StepCheck], _opt: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    check = ref()
    if check is None:
        return None
    snapshot = check._before_step()
    return None if snapshot is None else grads_after_closure(snapshot, args, kwargs)


class _StepCheck:
    """The context manager returned by :func:`check_step`."""

    def __init__(
        self,
        optimizer: object,
        params: ParamsLike | None,
        reference: Reference | None,
        manual: bool,
    ) -> None:
        self._optimizer, self._names, self._ref = resolve_inputs(
            optimizer, params, reference, caller="check_step"
        )
        self._manual = manual
        self._report = StepReport(optimizer=type(self._optimizer).__name__)
        self._snapshot: Snapshot | None = None
        self._calls = 0
        self._handles: list[RemovableHandle] = []

    def _take(self) -> Snapshot:
        return take_snapshot(self._optimizer, self._names, with_state=self._ref is not None)

    def _before_step(self) -> Snapshot | None:
        """Copy everything on the first step; the snapshot if it was just taken."""
        self._calls += 1
        if self._snapshot is not None or self._manual:
            return None
        self._snapshot = self._take()
        return self._snapshot

    def __enter__(self) -> StepReport:
        if self._manual:
            self._snapshot = self._take()
        me = weakref.ref(self)
        self._handles = [self._optimizer.register_step_pre_hook(functools.partial(_pre_hook, me))]
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
        snapshot, self._snapshot = self._snapshot, None
        if exc_type is not None:
            return
        name = type(self._optimizer).__name__
        if self._manual and self._calls:
            raise GradscopeError(
                f"check_step(manual=True) expects the block to update the parameters by hand, "
                f"but {name}.step() ran {self._calls} time(s) inside it; drop manual=True to "
                f"check optimizer.step()"
            )
        if snapshot is None:
            raise GradscopeError(
                f"the check_step block never called {name}.step(), so there is no step to "
                f"check; call optimizer.step() inside the block, or pass manual=True if the "
                f"block updates the parameters by hand"
            )
        filled = compare(snapshot, self._ref, optimizer=name, step=0)
        if self._calls > 1:
            filled.problems.append(
                f"{name}.step() ran {self._calls} times inside check_step, which checks one "
                f"step from the state before the first; was the step applied twice?"
            )
        self._report.__dict__.update(filled.__dict__)


def check_step(
    optimizer: torch.optim.Optimizer,
    *,
    params: ParamsLike | None = None,
    reference: Callable[..., torch.Tensor] | None = None,
    manual: bool = False,
) -> _StepCheck:
    """Check the ``optimizer.step()`` inside the ``with`` block against a reference update.

    SGD, Adam, AdamW, RMSprop and Adagrad (and their subclasses) have built-in references;
    ``reference=rule`` takes ``rule(param, grad, state, group) -> new param`` for any other.
    Without a reference only the structural checks run (parameters in no group, unchanged
    parameters with a gradient, lr == 0, every grad None), and the report says so.
    ``params=`` (a module, a name -> tensor mapping, or tensors or (name, tensor) pairs) names
    the parameters and finds those missing from the optimizer. ``manual=True`` checks a block
    that updates the parameters by hand against the update the optimizer would make (the
    tutorial's loop against SGD).

    >>> import torch, gradscope
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.Adam(net.parameters(), lr=0.01)
    >>> net(torch.ones(1, 3)).sum().backward()
    >>> with gradscope.check_step(opt, params=net) as report:
    ...     opt.step()
    >>> report.ok
    True
    """
    return _StepCheck(optimizer, params, reference, manual)
