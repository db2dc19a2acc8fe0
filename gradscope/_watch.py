"""watch(): hooks that record every parameter's ``.grad`` before and after each backward pass.

Recording only: the hooks keep references and copies, the statistics live in ``_stats`` and the
tables in ``_summary``. Hooks hold a weak reference to their watch, so a watch (and the model it
watches) can always be garbage collected; errors inside a hook are stored on the watch, never
raised out of the user's ``backward()``.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

from ._errors import GradscopeError, GradscopeWarning, UnknownParameterError
from ._naming import ParamNames, describe, named_parameters, suggest, unwrap_module
from ._records import BackwardRecord, GradRecord
from ._stats import batched_norms, cheap_stats

if TYPE_CHECKING:
    from ._summary import Summary

__all__ = ["Keep", "Watch", "watch"]

Keep = Literal["last", "all", "none"]
_KEEP_CHOICES = ("last", "all", "none")


@dataclass
class _Entry:
    """What the hooks saw of one parameter during the pass in progress."""

    grad: torch.Tensor | None  # the incoming gradient (what this pass adds), if held
    before: torch.Tensor | None
    accumulated: bool = False


@dataclass
class _Pass:
    index: int
    recording: bool
    entries: dict[str, _Entry] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)


def _accumulate_node(param: torch.Tensor) -> Any:
    return param.view_as(param).grad_fn.next_functions[0][0]  # type: ignore[union-attr]


def _will_accumulate(node: Any) -> bool:
    """Whether this backward pass writes ``.grad`` (False under ``torch.autograd.grad``)."""
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except RuntimeError:  # torch refuses the question for leaves during autograd.grad
        return False


def _remove_handles(
    handles: dict[str, list[RemovableHandle]], extra: list[RemovableHandle]
) -> None:
    for group in handles.values():
        for handle in group:
            handle.remove()
    handles.clear()
    for handle in extra:
        handle.remove()
    extra.clear()


class Watch:
    """Records, per parameter, ``.grad`` before and after every backward pass; see :func:`watch`."""

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
    ) -> None:
        if not isinstance(module, nn.Module):
            raise GradscopeError(
                f"watch() takes an nn.Module, not {describe(module)}; "
                "pass the model whose parameters you want to watch, e.g. watch(net)"
            )
        if keep not in _KEEP_CHOICES:
            raise GradscopeError(
                f"keep={keep!r} is not one of {', '.join(map(repr, _KEEP_CHOICES))}"
            )
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise GradscopeError(f"every={every!r}: pass a positive int (record every N-th pass)")
        if history is not None and (not isinstance(history, int) or history < 1):
            raise GradscopeError(f"history={history!r}: pass a positive int, or None for no bound")
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise GradscopeError(f"scaler= takes a torch.amp.GradScaler, not {describe(scaler)}")
        self._module: nn.Module | None = module
        self._module_ref = weakref.ref(module)
        self.keep: Keep = keep
        self.every = every
        self.scaler = scaler
        self._include = [include] if isinstance(include, str) else list(include or [])
        self._exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
        self._root: nn.Module | None = unwrap_module(module)
        self._root_type = type(self._root).__name__
        self._ddp = isinstance(module, nn.parallel.DistributedDataParallel)
        self._records: deque[BackwardRecord] = deque(maxlen=history)
        self._names = ParamNames()
        self._nodes: dict[str, Any] = {}
        self._param_handles: dict[str, list[RemovableHandle]] = {}
        self._other_handles: list[RemovableHandle] = []
        self._pass: _Pass | None = None
        self._passes_seen = 0
        self._last_after: dict[str, tuple[weakref.ref[torch.Tensor], int, torch.Tensor]] = {}
        self._replaced: list[str] = []
        self._warned_errors = 0
        self.errors: list[BaseException] = []
        self.closed = False
        self._finalizer = weakref.finalize(
            self, _remove_handles, self._param_handles, self._other_handles
        )
        self._sync()
        if not self._names.params and not self._frozen_names():
            raise GradscopeError(
                f"watch() found no parameters to watch in {type(module).__name__}"
                + (
                    f" matching include={self._include} exclude={self._exclude}"
                    if self._include or self._exclude
                    else ""
                )
            )
        ref = weakref.ref(self)

        def before_forward(_module: nn.Module, _args: Any) -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._sync)

        self._other_handles.append(module.register_forward_pre_hook(before_forward))

    # ----------------------------------------------------------------------------- public API
    @property
    def module(self) -> nn.Module | None:
        """The watched module (None once the watch is closed and the module was collected)."""
        return self._module if self._module is not None else self._module_ref()

    @property
    def records(self) -> list[BackwardRecord]:
        """One record per recorded backward pass, oldest first (at most ``history``)."""
        self._warn_new_errors()
        return list(self._records)

    @property
    def last(self) -> BackwardRecord:
        """The newest record; raises GradscopeError if no backward pass was recorded yet."""
        self._warn_new_errors()
        if not self._records:
            raise GradscopeError(self._why_no_record())
        return self._records[-1]

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
        return [r.grads[canonical] for r in self._records if canonical in r.grads]

    def summary(self, record: BackwardRecord | None = None) -> Summary:
        """A per-parameter table of the newest pass (or ``record``); ``str()`` it to read it."""
        from ._summary import Summary

        return Summary.of(record if record is not None else self.last, self)

    def report(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained HTML page (table, gradient-flow and norm charts) to ``path``.

        >>> net = torch.nn.Linear(3, 1)
        >>> with watch(net) as w:
        ...     net(torch.ones(1, 3)).sum().backward()
        >>> w.report("/tmp/gradscope-report.html").name
        'gradscope-report.html'
        """
        from ._report import write_report

        return write_report(self, path)

    def close(self) -> None:
        """Remove every hook this watch installed (idempotent). Records stay readable."""
        self._finalizer()
        self._pass = None
        self.closed = True
        # Let go of the model: a closed watch must never keep it alive (records are copies).
        self._module = self._root = None
        self._names = ParamNames()
        self._nodes.clear()
        self._last_after.clear()

    def __enter__(self) -> Watch:
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
        return (
            f"<gradscope.Watch of {self._root_type}: {len(self._param_handles)} hooked "
            f"parameters, {len(self._records)} records, {state}>"
        )

    # ----------------------------------------------------------------------------- hooks
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as error:  # never break the user's backward; surfaced via .errors
            self.errors.append(error)
            if self._pass is not None:
                self._pass.errors.append(error)

    def _selected(self, name: str) -> bool:
        if self._include and not any(fnmatch.fnmatchcase(name, p) for p in self._include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self._exclude)

    def _frozen_names(self) -> list[str]:
        return [n for n, p in self._names.params.items() if not p.requires_grad]

    def _sync(self) -> None:
        """Follow the module's current parameters: new, replaced, (un)frozen ones."""
        if self._root is None:
            return
        names = named_parameters(self._root)
        selected = ParamNames(
            params={n: p for n, p in names.params.items() if self._selected(n)},
            canonical={a: c for a, c in names.canonical.items() if self._selected(c)},
        )
        for name, param in selected.params.items():
            old = self._names.params.get(name)
            if old is not None and old is not param:
                self._replaced.append(name)
                self._unhook(name)
            if name not in self._param_handles and param.requires_grad:
                self._hook(name, param)
        for name in set(self._param_handles) - set(selected.params):
            self._unhook(name)
        self._names = selected

    def _hook(self, name: str, param: torch.Tensor) -> None:
        ref = weakref.ref(self)

        def on_grad(grad: torch.Tensor) -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._on_grad, name, param, grad)

        def on_accumulated(_param: torch.Tensor) -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._on_accumulated, name)

        self._param_handles[name] = [
            param.register_hook(on_grad),  # type: ignore[no-untyped-call]
            param.register_post_accumulate_grad_hook(on_accumulated),  # type: ignore[no-untyped-call]
        ]
        self._nodes[name] = _accumulate_node(param)

    def _unhook(self, name: str) -> None:
        for handle in self._param_handles.pop(name, []):
            handle.remove()
        self._nodes.pop(name, None)
        self._last_after.pop(name, None)

    def _on_grad(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        current = self._pass
        if current is None:
            self._passes_seen += 1
            recording = (self._passes_seen - 1) % self.every == 0
            current = self._pass = _Pass(self._passes_seen, recording)
            self._queue_end_of_pass()
        if not current.recording:
            return
        entry = current.entries.get(name)
        if entry is not None:  # a second gradient for one leaf in one pass (reentrant backward)
            if entry.grad is not None:
                entry.grad = entry.grad + grad.detach()
            return
        if self.keep == "none" and not self._ddp and _will_accumulate(self._nodes[name]):
            held = None  # read .grad at the end instead: holding it would force torch to copy it
        else:
            held = grad.detach().clone() if grad.requires_grad else grad
        before = None if self.keep == "none" else self._snapshot_before(name, param.grad)
        current.entries[name] = _Entry(grad=held, before=before)

    def _snapshot_before(self, name: str, grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:
            return None
        last = self._last_after.get(name)
        if last is not None and last[0]() is grad and grad._version == last[1]:
            return last[2]  # .grad is untouched since the last pass ended: share that copy
        return grad.detach().clone()  # the pass will add into it in place

    def _on_accumulated(self, name: str) -> None:
        current = self._pass
        if current is not None and name in current.entries:
            current.entries[name].accumulated = True

    def _queue_end_of_pass(self) -> None:
        ref = weakref.ref(self)

        def finish() -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._end_pass)

        def after_other_callbacks() -> None:
            # Queued from a callback, this runs after every callback queued during the pass,
            # such as DistributedDataParallel's, which writes the averaged gradients.
            Variable._execution_engine.queue_callback(finish)

        Variable._execution_engine.queue_callback(after_other_callbacks)

    def _end_pass(self) -> None:
        current, self._pass = self._pass, None
        if current is None or not current.recording:
            return
        self._sync()
        scale = self._loss_scale()
        names = list(current.entries)
        records: dict[str, GradRecord] = {}
        sources: list[torch.Tensor] = []
        for name in names:
            grad_record = self._make_record(name, current, scale)
            records[name] = grad_record
            source = grad_record.after if grad_record.accumulated else grad_record.delta
            if source is None:  # keep="none": read the live gradient once for its statistics
                source = self._names.params[name].grad
            sources.append(source if source is not None else torch.zeros(0))
        for name, source, norm in zip(names, sources, batched_norms(sources), strict=True):
            stats = cheap_stats(source, norm)
            records[name]._cheap = stats if scale is None else stats.scaled(1.0 / scale)
        trainable = [n for n, p in self._names.params.items() if p.requires_grad]
        backward = BackwardRecord(
            index=current.index,
            grads=records,
            missing=[n for n in trainable if n not in records],
            frozen=self._frozen_names(),
            aliases=dict(self._names.canonical),
            replaced=self._replaced,
            loss_scale=scale,
            errors=current.errors,
        )
        self._replaced = []
        if self.keep == "last" and self._records:
            self._records[-1].drop_tensors()
        self._records.append(backward)

    def _make_record(self, name: str, current: _Pass, scale: float | None) -> GradRecord:
        entry = current.entries[name]
        param = self._names.params[name]
        live = param.grad
        aliases = tuple(a for a, c in self._names.canonical.items() if c == name and a != name)
        common: dict[str, Any] = {
            "name": name,
            "index": current.index,
            "shape": param.shape,
            "accumulated": entry.accumulated,
            "loss_scale": scale,
            "aliases": aliases,
        }
        if self.keep == "none":
            return GradRecord(before=None, after=None, delta=None, **common)
        if not entry.accumulated or live is None:
            after = entry.before
        elif (
            entry.before is None
            and entry.grad is not None
            and not self._ddp
            and (live.data_ptr() != entry.grad.data_ptr())
        ):
            after = entry.grad  # .grad was empty, so it now equals what this pass added
        else:
            after = live.detach().clone()
        if live is not None and after is not None:
            self._last_after[name] = (weakref.ref(live), live._version, after)
        else:
            self._last_after.pop(name, None)
        if self._ddp and entry.accumulated and after is not None:
            delta = after if entry.before is None else after - entry.before
            return GradRecord(
                before=entry.before, after=after, delta=delta, local=entry.grad, **common
            )
        return GradRecord(before=entry.before, after=after, delta=entry.grad, **common)

    def _loss_scale(self) -> float | None:
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: True)():
            return None
        return float(self.scaler.get_scale())

    # ----------------------------------------------------------------------------- messages
    def _resolve(self, name: str) -> str:
        if not isinstance(name, str):
            raise GradscopeError(f"parameter names are strings, not {describe(name)}")
        known: dict[str, str] = {}
        for record in self._records:
            known.update(record.aliases)
        known.update(self._names.canonical)
        if name in known:
            return known[name]
        raise UnknownParameterError(
            f"the watch has no parameter named {name!r}{suggest(name, known)}"
        )

    def _why_no_record(self) -> str:
        reasons = []
        if self.closed:
            reasons.append("the watch is closed")
        if self._passes_seen and self.every > 1:
            reasons.append(f"every={self.every} skipped the {self._passes_seen} passes seen so far")
        if not any(p.requires_grad for p in self._names.params.values()):
            reasons.append("every watched parameter has requires_grad=False")
        if not reasons:
            reasons = [
                "backward() has not run since watch() started",
                "the forward pass ran under torch.no_grad() or inference_mode()",
                "the loss does not depend on this module (is the watch on the right model?)",
            ]
        return "no backward pass was recorded yet; likely because " + "; or ".join(reasons)

    def _warn_new_errors(self) -> None:
        if len(self.errors) > self._warned_errors:
            new = self.errors[self._warned_errors :]
            self._warned_errors = len(self.errors)
            warnings.warn(
                f"gradscope caught {len(new)} error(s) inside its hooks; your backward pass was "
                f"not affected but records may be incomplete. First: {new[0]!r} (see watch.errors)",
                GradscopeWarning,
                stacklevel=3,
            )


def watch(
    module: nn.Module,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    keep: Keep = "last",
    every: int = 1,
    history: int | None = 1000,
    scaler: Any = None,
) -> Watch:
    """Record every parameter's gradient before and after each backward pass of ``module``.

    ``include``/``exclude`` take glob patterns on parameter names; ``keep`` says which passes keep
    their tensors ("last": the newest only, older passes keep their statistics; "all"; "none":
    statistics only); ``every=N`` records every N-th pass; ``history`` bounds the records kept;
    ``scaler`` (a GradScaler) makes statistics unscaled. Works as a context manager.

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
    )
