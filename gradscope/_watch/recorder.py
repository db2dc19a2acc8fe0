"""The recording machinery behind watch(): per-parameter hooks, one record per backward pass.

Recording only: the hooks keep references and copies, the statistics live in ``stats``, the
records in ``records`` and the public object in ``watch``, which owns one recorder (tables and
pages are in ``gradscope._report``). Only the watch holds the recorder, and hooks hold it weakly,
so dropping the watch drops the recorder, which removes its hooks: neither can keep the model
alive. Errors inside a hook are stored on the recorder, never raised out of ``backward()``.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

from .._graph.module_tags import install_module_tagging
from .._naming import ParamNames, named_parameters, unwrap_module
from .records import BackwardRecord, GradRecord
from .stats import PendingNorms, cheap_stats, norm_tensor

__all__ = ["Keep", "Recorder"]

Keep = Literal["last", "all", "none"]
# Gradients at least this large get their norm taken inside the hook, while still in cache;
# smaller ones are cheaper in one fused kernel at the end of the pass.
_HOT_NORM_NUMEL = 1 << 16


@dataclass(slots=True)
class _Entry:
    """What the hooks saw of one parameter during the pass in progress."""

    grad: torch.Tensor | None  # the incoming gradient (what this pass adds), if held
    before: torch.Tensor | None
    accumulated: bool  # False under torch.autograd.grad, which leaves .grad alone
    incoming: tuple[int, int] | None = None  # (data_ptr, version) of a gradient torch may steal
    norm: torch.Tensor | None = None  # its norm, taken while it was hot in cache


@dataclass(slots=True)
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


class Recorder:
    """Hooks on every parameter of a module; one :class:`BackwardRecord` per backward pass.

    Arguments are validated by :class:`gradscope.Watch`, which owns one recorder and reads
    ``records``, ``names``, ``errors`` and ``passes_seen``; nothing else here is for outside use.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        include: Sequence[str],
        exclude: Sequence[str],
        keep: Keep,
        every: int,
        history: int | None,
        scaler: Any,
        copy: bool,
    ) -> None:
        self._module: nn.Module | None = module
        self._module_ref = weakref.ref(module)
        self.keep: Keep = keep
        self.every = every
        self.scaler = scaler
        self.copy = copy
        self._include = list(include)
        self._exclude = list(exclude)
        self._root: nn.Module | None = unwrap_module(module)
        self._root_type = type(self._root).__name__
        self._ddp = isinstance(module, nn.parallel.DistributedDataParallel)
        self.records: deque[BackwardRecord] = deque(maxlen=history)
        self.names = ParamNames()
        self._nodes: dict[str, Any] = {}
        self._param_handles: dict[str, list[RemovableHandle]] = {}
        self._other_handles: list[RemovableHandle] = []
        self._pass: _Pass | None = None
        self.passes_seen = 0
        # The newest record of each parameter, whose ``after`` may be ``.grad`` itself.
        self._last_record: dict[str, GradRecord] = {}
        self._pool: dict[str, list[torch.Tensor]] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._slots: list[tuple[dict[str, Any], str, torch.Tensor, bool]] = []
        self._replaced: list[str] = []
        self._unresolved: Callable[[], None] | None = None
        self._dropped: BackwardRecord | None = None  # the newest record already emptied
        self._pinned: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self.errors: list[BaseException] = []
        # Called with each new record and the current name -> parameter mapping (the watch's
        # diagnosis evidence, see _watch/monitors.py); each call is guarded like a hook.
        self.end_of_pass: list[Callable[[BackwardRecord, Mapping[str, torch.Tensor]], None]] = []
        self.closed = False
        self._finalizer = weakref.finalize(
            self, _remove_handles, self._param_handles, self._other_handles
        )
        self._sync(force=True)

    def install_forward_hooks(self, module: nn.Module, tag_modules: bool) -> None:
        ref = weakref.ref(self)

        def before_forward(_module: nn.Module, _args: Any) -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._before_forward)

        self._other_handles.append(module.register_forward_pre_hook(before_forward))
        # graph() then knows which module made each node (see _module_tags). Not under
        # torch.compile: its backward is one node anyway, and the hooks would break its graph.
        if tag_modules and self._root is not None and not hasattr(module, "_orig_mod"):
            self._other_handles.extend(install_module_tagging(self._root))

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

    def frozen_names(self) -> list[str]:
        """Watched parameters with ``requires_grad=False`` right now."""
        return [n for n, p in self.names.params.items() if not p.requires_grad]

    @property
    def module(self) -> nn.Module | None:
        """The watched module; None once closed and the module was collected."""
        return self._module if self._module is not None else self._module_ref()

    @property
    def module_type(self) -> str:
        """The class name of the watched model (unwrapped from DDP/compile), kept after close."""
        return self._root_type

    @property
    def hooked(self) -> int:
        """How many parameters carry a hook of this recorder right now."""
        return len(self._param_handles)

    def close(self) -> None:
        """Remove every hook (idempotent) and let go of the model. Records stay readable."""
        if self._unresolved is not None:  # read back the last pass's norms while we can
            self._unresolved()
        self._finalizer()
        self._pass = None
        self.closed = True
        # A closed recorder must never keep the model alive (records hold their own tensors).
        self._module = self._root = None
        self.names = ParamNames()
        self._nodes.clear()
        self._last_record.clear()
        self._pool.clear()

    def _changed(self) -> bool:
        """Whether any parameter was replaced, (un)frozen or removed since the last sync.

        A few dict lookups per parameter, so it can run before every forward pass; walking the
        module tree each time cost ~10% of a LeNet step.
        """
        for slots, key, param, requires_grad in self._slots:
            current = slots.get(key)
            if current is not param or param.requires_grad != requires_grad:
                return True
        return False

    def _sync(self, *, force: bool = False) -> None:
        """Follow the module's current parameters: new, replaced, (un)frozen ones."""
        if self._root is None or not (force or self._changed()):
            return
        names = named_parameters(self._root)
        selected = ParamNames(
            params={n: p for n, p in names.params.items() if self._selected(n)},
            canonical={a: c for a, c in names.canonical.items() if self._selected(c)},
        )
        for name, param in selected.params.items():
            old = self.names.params.get(name)
            if old is not None and old is not param:
                self._replaced.append(name)
                self._unhook(name)
            if name not in self._param_handles and param.requires_grad:
                self._hook(name, param)
        for name in set(self._param_handles) - set(selected.params):
            self._unhook(name)
        self.names = selected
        self._shapes = {n: tuple(p.shape) for n, p in selected.params.items()}
        self._aliases = {
            name: tuple(a for a, c in selected.canonical.items() if c == name and a != name)
            for name in selected.params
        }
        self._slots = [
            (module._parameters, key, param, param.requires_grad)
            for module in self._root.modules()
            for key, param in module._parameters.items()
            if param is not None
        ]

    def _hook(self, name: str, param: torch.Tensor) -> None:
        ref = weakref.ref(self)

        def on_grad(grad: torch.Tensor) -> None:
            watch = ref()
            if watch is not None:
                watch._guard(watch._on_grad, name, param, grad)

        # A tensor hook sees the incoming gradient while .grad still holds the old one, fires
        # under torch.compile and torch.autograd.grad, and once with the sum for tied weights.
        # It does not fire for FSDP2/DTensor parameters (post-accumulate hooks do): not
        # supported yet.
        handle = param.register_hook(on_grad)  # type: ignore[no-untyped-call]
        self._param_handles[name] = [handle]
        self._nodes[name] = _accumulate_node(param)

    def _unhook(self, name: str) -> None:
        for handle in self._param_handles.pop(name, []):
            handle.remove()
        self._nodes.pop(name, None)
        self._last_record.pop(name, None)
        self._pool.pop(name, None)

    def _on_grad(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        current = self._pass
        if current is None:
            self.passes_seen += 1
            recording = (self.passes_seen - 1) % self.every == 0
            current = self._pass = _Pass(self.passes_seen, recording)
            self._queue_end_of_pass()
            if recording and self.keep == "last" and self.records:
                # Let go of the last pass's tensors now rather than when this pass ends, so the
                # allocator can reuse that memory for this pass's gradients.
                self._recycle(self.records[-1])
        if not current.recording:
            return
        entry = current.entries.get(name)
        if entry is not None:  # a second gradient for one leaf in one pass (reentrant backward)
            if entry.grad is not None:
                entry.grad = entry.grad + grad.detach()
            return
        old = param.grad
        accumulates = _will_accumulate(self._nodes[name])
        incoming = norm = None
        if grad.requires_grad:  # create_graph=True: a plain copy, not the double-backward graph
            held: torch.Tensor | None = grad.detach().clone()
        elif old is not None or not accumulates or self._ddp:
            held = grad  # free: torch adds it into the existing .grad, or does not use .grad
        else:
            # torch moves this very tensor into .grad unless someone holds it, so do not hold it
            # (that would cost a copy); remember its address and measure it while it is hot.
            held = None
            incoming = (grad.data_ptr(), grad._version)
            if (
                grad.numel() >= _HOT_NORM_NUMEL
                and not grad.is_cuda  # on a GPU one fused kernel at the end beats launches
                and grad.layout == torch.strided
            ):
                norm = norm_tensor(grad)
        keep_before = old is not None and self.keep != "none"
        before = self._snapshot_before(name, old) if keep_before else None
        current.entries[name] = _Entry(held, before, accumulates, incoming, norm)

    def _snapshot_before(self, name: str, grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:
            return None
        snapshot = self._copy(name, grad)  # this pass is about to add into .grad in place
        last = self._last_record.pop(name, None)
        if last is not None:  # copy-on-write: the last record may hold this very .grad
            last._replace(grad, snapshot)
        return snapshot

    def _copy(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A detached copy of ``tensor``, written into a recycled buffer when one fits.

        Fresh memory for every copy costs page faults that made copying 3x slower than writing
        into a buffer of the previous pass (measured on CPU).
        """
        pool = self._pool.get(name)
        while pool:
            buffer = pool.pop()
            if (
                buffer.shape == tensor.shape
                and buffer.dtype == tensor.dtype
                and buffer.device == tensor.device
                and buffer.stride() == tensor.stride()
            ):
                return buffer.copy_(tensor.detach())
        return tensor.detach().clone()

    def _before_forward(self) -> None:
        self._sync()
        if self.keep == "last" and not self.copy and self.records:
            self._release_orphans(self.records[-1])

    def _release_orphans(self, record: BackwardRecord) -> None:
        """Let go of the newest pass's tensors that are no longer any parameter's ``.grad``.

        After ``zero_grad()`` the watch would be their only holder; keeping them into the next
        forward and backward made the allocator hand out fresh pages there, which cost 8% of an
        MLP training step. Statistics recorded at the end of the pass stay.
        """
        if record is self._dropped:
            return
        kept = 0
        for name, grad in record.grads.items():
            if grad._after is None:
                continue
            param = self.names.params.get(name)
            if grad._after_version is not None and (param is None or param.grad is not grad._after):
                grad.drop_tensors()
            else:
                kept += 1
        if not kept:
            self._dropped = record  # nothing left to drop or recycle

    def _recycle(self, dropped: BackwardRecord) -> None:
        """Drop the tensors of an older pass, keeping its own copies as buffers for later ones."""
        if dropped is self._dropped:
            return
        self._dropped = dropped
        for name, tensors in dropped.drop_tensors().items():
            pool = self._pool.setdefault(name, [])
            for tensor in tensors:
                if tensor.layout == torch.strided and len(pool) < 2:
                    pool.append(tensor)

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
        records: dict[str, GradRecord] = {}
        sources: list[torch.Tensor] = []
        known: list[torch.Tensor | None] = []
        for name, entry in current.entries.items():
            grad_record, source, norm = self._make_record(name, entry, current.index, scale)
            records[name] = grad_record
            sources.append(source if source is not None else torch.zeros(0))
            known.append(norm)
        if self._unresolved is not None:  # frees the pinned buffers for this pass's norms
            self._unresolved()
        pending = PendingNorms(sources, known, self._pinned)
        self._record_stats(list(records.values()), pending, scale)
        frozen = self.frozen_names()
        missing = (
            []
            if len(records) + len(frozen) == len(self.names.params)
            else [n for n, p in self.names.params.items() if p.requires_grad and n not in records]
        )
        backward = BackwardRecord(
            index=current.index,
            grads=records,
            missing=missing,
            frozen=frozen,
            aliases=self.names.canonical,  # replaced, never changed in place, by _sync
            shapes=self._shapes,  # the same
            replaced=self._replaced,
            loss_scale=scale,
            errors=current.errors,
        )
        self._replaced = []
        self.records.append(backward)
        for listener in self.end_of_pass:
            self._guard(listener, backward, self.names.params)

    def _record_stats(
        self, records: list[GradRecord], pending: PendingNorms, scale: float | None
    ) -> None:
        """Give each record its norm and NaN/Inf counts, now or, on CUDA, when first read.

        Reading the norms back on a CUDA device would wait for the whole backward pass; instead
        they travel asynchronously and are read at the latest when the next pass ends, by which
        time they have long arrived (so the watch holds at most one pass of pending tensors).
        """

        def resolve() -> None:
            self._unresolved = None if self._unresolved is resolve else self._unresolved
            tensors, norms = pending.take()
            for record, tensor, norm in zip(records, tensors, norms, strict=True):
                record._resolve = None
                if math.isfinite(norm):  # no NaN, no Inf: the rest of the stats is implied
                    record._norm = norm
                    continue
                stats = cheap_stats(tensor, norm)
                record._cheap = stats if scale is None else stats.scaled(1.0 / scale)

        if pending.deferred:
            for record in records:
                record._resolve = resolve
            self._unresolved = resolve
        else:
            resolve()

    def _make_record(
        self, name: str, entry: _Entry, index: int, scale: float | None
    ) -> tuple[GradRecord, torch.Tensor | None, torch.Tensor | None]:
        """One parameter's record, the tensor its statistics describe, and its norm if known."""
        param = self.names.params[name]
        live = param.grad
        record = GradRecord(
            name,
            index,
            param.shape,
            accumulated=entry.accumulated,
            loss_scale=scale,
            aliases=self._aliases[name],
        )
        if not entry.accumulated or live is None:  # torch.autograd.grad: .grad is untouched
            if self.keep != "none":
                record._before = record._after = entry.before
                record._delta = entry.grad
            return record, entry.grad, None
        norm = entry.norm
        if norm is not None and entry.incoming != (live.data_ptr(), live._version):
            norm = None  # .grad is not the very gradient the hook measured (another hook?)
        if self.keep == "none":
            return record, live, norm
        if self.copy:
            after = self._copy(name, live)
        else:
            after, record._after_version = live, live._version
        self._last_record[name] = record
        record._before, record._after = entry.before, after
        if self._ddp:  # .grad now holds the average over processes; entry.grad is the local one
            record._local = entry.grad
            record._delta = after if entry.before is None else after - entry.before
        else:  # with no .grad before the pass, .grad is exactly what the pass added
            record._delta = after if entry.before is None else entry.grad
        return record, after, norm

    def _loss_scale(self) -> float | None:
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: True)():
            return None
        return float(self.scaler.get_scale())
