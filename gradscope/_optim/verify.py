"""``verify_optimizer``: check every optimizer step of a training run until ``close()``."""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .._errors import GradscopeError, GradscopeWarning, StepMismatch
from .._naming import ParamNames, ParamsLike
from .check import resolve_inputs
from .compare import Snapshot, compare, grads_after_closure, take_snapshot
from .references import Reference
from .step_report import StepReport

__all__ = ["OptimizerVerifier", "verify_optimizer"]

_ON_MISMATCH = ("warn", "raise")


def _pre_hook(
    ref: weakref.ref[OptimizerVerifier], opt: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    verifier = ref()
    if verifier is None or verifier._snapshot is not None:
        return None
    snapshot = verifier._before_step(opt)
    return grads_after_closure(snapshot, args, kwargs)


def _post_hook(ref: weakref.ref[OptimizerVerifier], opt: Any, args: Any, kwargs: Any) -> None:
    verifier = ref()
    if verifier is not None:
        verifier._after_step()


def _remove(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class OptimizerVerifier:
    """Checks each ``optimizer.step()`` until :meth:`close`; made by :func:`verify_optimizer`.

    ``reports`` holds one :class:`StepReport` per step. It keeps no reference to the model or the
    optimizer once closed (nor to the optimizer at all: that is held weakly).
    """

    def __init__(
        self,
        optimizer: object,
        params: ParamsLike | None,
        reference: Reference | None,
        on_mismatch: str,
    ) -> None:
        if on_mismatch not in _ON_MISMATCH:
            raise GradscopeError(
                f"verify_optimizer(on_mismatch={on_mismatch!r}): use 'warn' (the default: a "
                f"GradscopeWarning per failing step) or 'raise' (StepMismatch from step())"
            )
        opt, names, ref = resolve_inputs(optimizer, params, reference, caller="verify_optimizer")
        self.reports: list[StepReport] = []
        self.on_mismatch = on_mismatch
        self._names: ParamNames | None = names
        self._ref = ref
        self._name = type(opt).__name__
        self._snapshot: Snapshot | None = None
        me = weakref.ref(self)
        self._handles = [
            opt.register_step_pre_hook(functools.partial(_pre_hook, me)),
            opt.register_step_post_hook(functools.partial(_post_hook, me)),
        ]
        # If the verifier is dropped without close(), its hooks go with it.
        self._finalizer = weakref.finalize(self, _remove, self._handles)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the verifier was garbage collected)."""
        return not self._finalizer.alive

    @property
    def ok(self) -> bool:
        """True when every step checked so far passed."""
        return all(report.ok for report in self.reports)

    @property
    def failures(self) -> list[StepReport]:
        """The reports of the steps that failed."""
        return [report for report in self.reports if not report.ok]

    def _before_step(self, opt: torch.optim.Optimizer) -> Snapshot:
        self._snapshot = take_snapshot(opt, self._names, with_state=self._ref is not None)
        return self._snapshot

    def _after_step(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        report = compare(snapshot, self._ref, optimizer=self._name, step=len(self.reports))
        self.reports.append(report)
        if report.ok:
            return
        if self.on_mismatch == "raise":
            raise StepMismatch(report.failure_message())
        warnings.warn(report.failure_message(), GradscopeWarning, stacklevel=4)

    def close(self) -> None:
        """Stop checking: remove the hooks and drop every reference to the model's parameters."""
        self._finalizer()
        self._names = None
        self._snapshot = None

    def __enter__(self) -> OptimizerVerifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        steps, failed = len(self.reports), len(self.failures)
        return f"<OptimizerVerifier of {self._name}: {steps} steps, {failed} failed, {state}>"


def verify_optimizer(
    optimizer: torch.optim.Optimizer,
    *,
    params: ParamsLike | None = None,
    reference: Callable[..., torch.Tensor] | None = None,
    on_mismatch: str = "warn",
) -> OptimizerVerifier:
    """Check every ``optimizer.step()`` against its reference until ``.close()``.

    A failing step warns (:class:`gradscope.GradscopeWarning`) by default, or raises
    :class:`gradscope.StepMismatch` from ``step()`` with ``on_mismatch="raise"``. Arguments are
    those of :func:`gradscope.check_step`. Each step copies the parameters, gradients and
    optimizer state once, so use it for a few hundred steps, not a whole long run.

    >>> import torch, gradscope
    >>> net = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    >>> with gradscope.verify_optimizer(opt, params=net) as v:
    ...     for _ in range(3):
    ...         opt.zero_grad()
    ...         net(torch.ones(1, 3)).sum().backward()
    ...         opt.step()
    >>> len(v.reports), v.ok
    (3, True)
    """
    return OptimizerVerifier(optimizer, params, reference, on_mismatch)
