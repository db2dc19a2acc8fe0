"""watch(): the public face of the recorder: options, records, history, summary and messages.

The hooks themselves live in ``_recorder``; this module reads records and explains what went
wrong. Its arguments are checked in ``arguments.py``, its explanations written in ``messages.py``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._errors import GradscopeError, GradscopeWarning
from .._naming import describe, named_parameters, reject_meta
from .arguments import check_arguments, patterns
from .messages import canonical_name, why_no_record
from .monitors import Monitors, optimizers_of
from .recorder import Keep, Recorder
from .records import BackwardRecord, GradRecord

if TYPE_CHECKING:
    from .._diagnose.diagnosis import Diagnosis
    from .._graph.graph import Graph
    from .._report.summary import Summary

__all__ = ["Keep", "Watch", "watch"]


class Watch:
    """Records, per parameter, ``.grad`` before and after every backward pass; see :func:`watch`.

    The watch owns a :class:`~gradscope._watch.recorder.Recorder` (the hooks) rather than being
    one: what users call is here, the machinery is there.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        keep: Keep = "last",
        every: int = 1,
        history: int | None = 1000,
        scaler: Any = None,
        copy: bool = False,
        tag_modules: bool = True,
        max_bytes: int | None = None,
        optimizer: Any = None,
        on_problem: str | None = None,
        check_forward: bool = True,
    ) -> None:
        check_arguments(
            module,
            keep=keep,
            every=every,
            history=history,
            max_bytes=max_bytes,
            copy=copy,
            tag_modules=tag_modules,
            scaler=scaler,
        )
        optimizers = optimizers_of(optimizer)
        include_list = patterns(include, "include")
        exclude_list = patterns(exclude, "exclude")
        reject_meta(named_parameters(module).params, "watch()")
        self._recorder = Recorder(
            module,
            include=include_list,
            exclude=exclude_list,
            keep=keep,
            every=every,
            history=history,
            scaler=scaler,
            copy=copy,
            max_bytes=max_bytes,
        )
        if not self._recorder.names.params:  # frozen parameters are watched too
            self._recorder.close()
            raise GradscopeError(
                f"watch() found no parameters to watch in {type(module).__name__}"
                + (
                    f" matching include={include_list} exclude={exclude_list}"
                    if include_list or exclude_list
                    else ""
                )
            )
        self._recorder.install_forward_hooks(module, tag_modules)
        try:
            self._monitors = Monitors(
                self._recorder,
                module,
                optimizers=optimizers,
                check_forward=check_forward,
                on_problem=on_problem,
                history=history,
            )
        except GradscopeError:
            self._recorder.close()
            raise
        self.last_graph: Graph | None = None
        self._warned_errors = 0
        self._warned_notes = 0

    # ----------------------------------------------------------------------------- public API
    @property
    def module(self) -> nn.Module | None:
        """The watched module (None once the watch is closed and the module was collected)."""
        return self._recorder.module

    @property
    def model_name(self) -> str:
        """The class name of the watched model (unwrapped from DDP or ``torch.compile``)."""
        return self._recorder.module_type

    @property
    def errors(self) -> list[BaseException]:
        """Errors caught inside gradscope's hooks (your backward pass was not affected)."""
        return self._recorder.errors

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the ``with`` block ended)."""
        return self._recorder.closed

    @property
    def keep(self) -> Keep:
        """Which passes keep their tensors: "last", "all" or "none"."""
        return self._recorder.keep

    @property
    def every(self) -> int:
        """Every how many passes one is recorded."""
        return self._recorder.every

    @property
    def copy(self) -> bool:
        """Whether ``after`` is a copy of ``.grad`` taken at the end of each pass."""
        return self._recorder.copy

    @property
    def scaler(self) -> Any:
        """The GradScaler whose scale statistics are divided by, or None."""
        return self._recorder.scaler

    @property
    def max_bytes(self) -> int:
        """How many bytes of gradient tensors ``keep="all"`` holds at most."""
        return self._recorder.max_bytes

    @property
    def records(self) -> list[BackwardRecord]:
        """One record per recorded backward pass, oldest first (at most ``history``)."""
        self._catch_up()
        return list(self._recorder.records)

    @property
    def last(self) -> BackwardRecord:
        """The newest record; raises GradscopeError if no backward pass was recorded yet."""
        self._catch_up()
        if not self._recorder.records:
            raise GradscopeError(self._why_no_record())
        return self._recorder.records[-1]

    def history(self, name: str) -> list[GradRecord]:
        """This parameter's record in every recorded pass where it received a gradient.

        >>> net = torch.nn.Linear(2, 1)
        >>> with watch(net) as w:
        ...     for _ in range(3):
        ...         net(torch.ones(1, 2)).sum().backward()
        >>> [round(r.stats.norm, 3) for r in w.history("bias")]
        [1.0, 2.0, 3.0]
        """
        canonical = self._resolve(name)
        self._catch_up()
        return [r.grads[canonical] for r in self._recorder.records if canonical in r.grads]

    def summary(self, record: BackwardRecord | None = None) -> Summary:
        """A per-parameter table of the newest pass (or ``record``); ``str()`` it to read it.
        The newest pass's table ends with the findings of :meth:`diagnose`."""
        from .._report.summary import Summary

        if record is not None and not isinstance(record, BackwardRecord):
            hint = f"; for one parameter over the passes use w.history({record!r})"
            raise GradscopeError(
                f"summary() takes a BackwardRecord (e.g. w.records[0]) or nothing for the "
                f"newest pass, not {describe(record)}" + (hint if isinstance(record, str) else "")
            )
        if record is not None:
            return Summary.of(record)
        return Summary.of(self.last, findings=self.diagnose())

    def diagnose(self) -> Diagnosis:
        """Why this model does not learn: the problems the records show, most severe first.

        Runs on read, from what the watch recorded (nothing here runs in the training loop).
        ``watch(net, optimizer=opt)`` adds the checks that need optimizer steps.

        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        >>> with watch(net) as w:
        ...     for _ in range(3):
        ...         net[1](net[0](torch.ones(2, 3)).detach()).sum().backward()
        >>> d = w.diagnose()
        >>> d.ok, d[0].kind, d[0].params
        (False, 'no_gradient', ('0.weight', '0.bias'))
        """
        from .._diagnose.diagnose import diagnose

        self._catch_up()
        evidence = self._monitors.evidence(self.last_graph)
        assert evidence is not None  # the watch holds its recorder
        return diagnose(evidence)

    def graph(self, *outputs: torch.Tensor, grads: bool = True) -> Graph:
        """The autograd graph of ``outputs`` (see :func:`gradscope.graph`), kept as ``last_graph``.

        Call it after the forward pass and before ``backward()``; with ``grads=True`` the graph
        records the gradient that flows through each node.
        """
        from .._graph.build import graph as build_graph

        module = self._recorder.module
        if self.closed or module is None:
            raise GradscopeError("this watch is closed; call graph() while it is open")
        self.last_graph = build_graph(*outputs, params=module, grads=grads)
        return self.last_graph

    def report(self, path: str | os.PathLike[str], *, ranks: str | None = None) -> Path:
        """Write a self-contained HTML page (table, gradient-flow and norm charts, and the
        backward graph when one was captured) to ``path``.

        Under torchrun each rank's page describes that rank. ``ranks="all"`` is collective
        (every rank must call it): each rank's per-parameter norms are gathered and rank 0
        alone writes one page with a column per rank and each rank's total norm over the
        passes; the other ranks write nothing and return ``path``.

        >>> net = torch.nn.Linear(3, 1)
        >>> with watch(net) as w:
        ...     net(torch.ones(1, 3)).sum().backward()
        >>> w.report("/tmp/gradscope-report.html").name
        'gradscope-report.html'
        """
        from .._report.html import write_report

        if ranks not in (None, "all"):
            raise GradscopeError(
                f'report(ranks=...) takes "all" (one page for every rank, collective) or None '
                f"(this rank), not {ranks!r}"
            )
        self._catch_up()
        if not self._recorder.records:
            raise GradscopeError(
                "report(): nothing to report, "
                + self._why_no_record()
                + "; run forward and backward inside the watch first"
            )
        return write_report(self, path, self.last_graph, ranks=ranks)

    def close(self) -> None:
        """Remove every hook this watch installed (idempotent). Records stay readable."""
        self._monitors.close()
        self._recorder.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: the newest pass's table, each norm over the passes as a sparkline."""
        from .._report.notebook import watch_html

        no_record = None if self._recorder.records else self._why_no_record()
        return watch_html(self, repr(self), no_record)

    def __repr__(self) -> str:
        recorder = getattr(self, "_recorder", None)
        if recorder is None:  # __init__ failed before the recorder existed
            return "<gradscope.Watch (not started)>"
        state = "closed" if recorder.closed else "open"
        return (
            f"<gradscope.Watch of {recorder.module_type}: {recorder.hooked} hooked "
            f"parameters, {len(recorder.records)} records, {state}>"
        )

    # ----------------------------------------------------------------------------- messages
    def _resolve(self, name: str) -> str:
        return canonical_name(self._recorder, name)

    def _why_no_record(self) -> str:
        return why_no_record(self._recorder)

    def _catch_up(self) -> None:
        """End a pass whose backward() raised, then warn about what happened since last time."""
        self._recorder.poll()
        errors = self._recorder.errors
        if len(errors) > self._warned_errors:
            new = errors[self._warned_errors :]
            self._warned_errors = len(errors)
            warnings.warn(
                f"gradscope caught {len(new)} error(s) inside its hooks; your backward pass was "
                f"not affected but records may be incomplete. First: {new[0]!r} (see watch.errors)",
                GradscopeWarning,
                stacklevel=3,
            )
        notes = self._recorder.notes
        for note in notes[self._warned_notes :]:
            warnings.warn(f"gradscope: {note}", GradscopeWarning, stacklevel=3)
        self._warned_notes = len(notes)


def watch(
    module: nn.Module,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    keep: Keep = "last",
    every: int = 1,
    history: int | None = 1000,
    scaler: Any = None,
    copy: bool = False,
    tag_modules: bool = True,
    max_bytes: int | None = None,
    optimizer: Any = None,
    on_problem: str | None = None,
    check_forward: bool = True,
) -> Watch:
    """Record every parameter's gradient before and after each backward pass of ``module``.

    ``include``/``exclude`` take glob patterns on parameter names (a tied parameter matches
    under any of its names); ``keep`` says which passes keep their tensors ("last": the newest
    only, until the next forward pass once ``zero_grad()`` released them, older passes keep their
    statistics; "all": every pass's, within ``max_bytes`` (default: 16 times the model's
    gradients, at least 256 MiB; past it the oldest passes let go of theirs, with a warning);
    "none": statistics only); ``every=N`` records every N-th pass; ``history`` bounds the
    records kept;
    ``scaler`` (a GradScaler) makes statistics unscaled; ``copy=True`` copies ``.grad`` at the
    end of every pass, so ``after`` survives in-place changes such as ``clip_grad_norm_`` (by
    default the watch keeps the tensor itself and copies only when backward is about to add into
    it, which is what makes it cheap); ``tag_modules`` notes which module ran each op, so
    :func:`gradscope.graph` can group nodes by module. Works as a context manager.

    For :meth:`Watch.diagnose`: ``optimizer`` (one optimizer or a list) adds step hooks that
    record how far each parameter moved and which parameters the optimizer holds;
    ``check_forward`` checks each module's output for NaN/Inf (one on-device sum per module,
    read once per pass); ``on_problem="warn"`` or ``"raise"`` warns or raises
    (:class:`gradscope.ProblemFound`) out of ``loss.backward()`` on the first error a pass can
    show: a NaN/Inf gradient or forward value, a parameter that never gets a gradient.

    >>> net = torch.nn.Linear(3, 1)
    >>> with watch(net) as w:
    ...     net(torch.ones(1, 3)).sum().backward()
    >>> w.last["bias"].after
    tensor([1.])
    """
    return Watch(
        module,
        include=include,
        exclude=exclude,
        keep=keep,
        every=every,
        history=history,
        scaler=scaler,
        copy=copy,
        tag_modules=tag_modules,
        max_bytes=max_bytes,
        optimizer=optimizer,
        on_problem=on_problem,
        check_forward=check_forward,
    )
