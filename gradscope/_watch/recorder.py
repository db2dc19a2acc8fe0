"""The recording machinery behind watch(): per-parameter hooks, one record per backward pass.

Recording only: when a pass starts and ends is in ``passes``, which tensors are kept in
``keeping``, the statistics in ``reading`` and ``stats``, the records in ``records`` and the
public object in ``watch``, which owns one recorder (tables and pages are in
``gradscope._report``). Only the watch holds the recorder, and hooks hold it weakly, so dropping
the watch drops the recorder, which removes its hooks: neither can keep the model alive. Errors
inside a hook are stored on the recorder, never raised out of ``backward()``.
"""

from __future__ import annotations

import fnmatch
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._graph.module_tags import install_module_tagging
from .._hooks import CopySafe
from .._naming import ParamNames, named_parameters, unwrap_module
from .assembly import arrived, make_grad_record, scaler_moved
from .keeping import Keep, Keeper, default_max_bytes
from .passes import Entry, Pass, accumulate_node, will_accumulate
from .reading import HostCopy, Reading, host_copy_for
from .records import BackwardRecord, GradRecord
from .stats import reduction_dtype

__all__ = ["Keep", "Recorder"]

# Gradients at least this large get their norm taken inside the hook, while still in cache;
# smaller ones are cheaper in one fused kernel at the end of the pass.
_HOT_NORM_NUMEL = 1 << 16


def _remove_handles(handles: dict[str, RemovableHandle], extra: list[RemovableHandle]) -> None:
    for handle in handles.values():
        handle.remove()
    handles.clear()
    for handle in extra:
        handle.remove()
    extra.clear()


def _before_forward(ref: weakref.ref[Recorder], _module: nn.Module, _args: Any) -> None:
    recorder = ref()
    if recorder is not None:
        recorder._guard(recorder._before_forward)


def _on_grad(
    ref: weakref.ref[Recorder], name: str, param: torch.Tensor, grad: torch.Tensor
) -> None:
    recorder = ref()
    if recorder is not None:
        recorder._guard(recorder._on_grad, name, param, grad)


class Recorder:
    """Hooks on every parameter of a module; one :class:`BackwardRecord` per backward pass.

    Arguments are validated by :class:`gradscope.Watch`, which owns one recorder and reads
    ``records``, ``names``, ``errors``, ``notes`` and ``passes_seen``; nothing else here is for
    outside use.
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
        max_bytes: int | None = None,
    ) -> None:
        self._module: nn.Module | None = module
        self._module_ref = weakref.ref(module)
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
        self._param_handles: dict[str, RemovableHandle] = {}
        self._other_handles: list[RemovableHandle] = []
        self._pass: Pass | None = None
        self.passes_seen = 0
        # The newest record of each parameter, whose ``after`` may be ``.grad`` itself.
        self._last_record: dict[str, GradRecord] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._slots: list[tuple[dict[str, Any], str, torch.Tensor, bool]] = []
        self._replaced: list[str] = []
        self._in_flight: Reading | None = None  # the newest pass's statistics, if still deferred
        # How results reach the host, per device (the seam tests replace: host_copy_for).
        self._copies: dict[torch.device, HostCopy] = {}
        self.errors: list[BaseException] = []
        self.notes: list[str] = []  # things to tell the user once, as warnings, on the next read
        self.closed = False
        self._finalizer = weakref.finalize(
            self, _remove_handles, self._param_handles, self._other_handles
        )
        self.keep: Keep = keep
        self._keeper = Keeper(keep, max_bytes or 0)
        self._sync(force=True)
        if max_bytes is None:
            self._keeper.max_bytes = default_max_bytes(self.names.params)

    @property
    def max_bytes(self) -> int:
        return self._keeper.max_bytes

    def install_forward_hooks(self, module: nn.Module, tag_modules: bool) -> None:
        hook = CopySafe(_before_forward, weakref.ref(self))
        self._other_handles.append(module.register_forward_pre_hook(hook))
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

    def _selected(self, aliases: Sequence[str]) -> bool:
        """Whether a parameter known by these names (tied weights have several) is watched."""

        def matches(patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(a, p) for a in aliases for p in patterns)

        if self._include and not matches(self._include):
            return False
        return not matches(self._exclude)

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

    def poll(self) -> None:
        """End a pass whose ``backward()`` raised (before a read, a forward or a new pass)."""
        current = self._pass
        if current is not None and current.end() is None:
            self._guard(self._end_pass, current, True)

    def close(self) -> None:
        """Remove every hook (idempotent) and let go of the model. Records stay readable."""
        self.poll()
        if self._in_flight is not None:  # read back the last pass's statistics while we can
            self._in_flight.wait()
            self._in_flight = None
        if self._pass is not None:
            self._pass.cancel()
        self._finalizer()
        self._pass = None
        self.closed = True
        # A closed recorder must never keep the model alive (records hold their own tensors).
        self._module = self._root = None
        self.names = ParamNames()
        self._nodes.clear()
        self._last_record.clear()
        self._keeper.clear()

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
        aliases: dict[str, list[str]] = {}
        for alias, canonical in names.canonical.items():
            aliases.setdefault(canonical, []).append(alias)
        chosen = {n for n in names.params if self._selected(aliases[n])}
        selected = ParamNames(
            params={n: p for n, p in names.params.items() if n in chosen},
            canonical={a: c for a, c in names.canonical.items() if c in chosen},
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
        self._aliases = {n: tuple(a for a in aliases[n] if a != n) for n in selected.params}
        self._slots = [
            (module._parameters, key, param, param.requires_grad)
            for module in self._root.modules()
            for key, param in module._parameters.items()
            if param is not None
        ]

    def _hook(self, name: str, param: torch.Tensor) -> None:
        # A tensor hook sees the incoming gradient while .grad still holds the old one, fires
        # under torch.compile and torch.autograd.grad, and once with the sum for tied weights.
        # It does not fire for FSDP2/DTensor parameters (post-accumulate hooks do): not
        # supported yet. Parameters drop their hooks when copied or pickled.
        self._register(name, param)
        self._nodes[name] = accumulate_node(param)

    def _register(self, name: str, param: torch.Tensor) -> None:
        hook = CopySafe(_on_grad, weakref.ref(self), name, param)
        self._param_handles[name] = param.register_hook(hook)  # type: ignore[no-untyped-call]

    def _unhook(self, name: str) -> None:
        handle = self._param_handles.pop(name, None)
        if handle is not None:
            handle.remove()
        self._nodes.pop(name, None)
        self._last_record.pop(name, None)
        self._keeper.forget(name)

    def _rehook_last(self, name: str, param: torch.Tensor) -> None:
        """Put our hook after every other hook on ``param`` from the next pass on.

        Torch calls a copy of the hook list, so this is safe while it runs.
        """
        self._param_handles.pop(name).remove()
        self._register(name, param)

    # ------------------------------------------------------------------------- during a pass
    def _start_pass(self) -> Pass:
        self.passes_seen += 1
        recording = (self.passes_seen - 1) % self.every == 0
        current = self._pass = Pass(self.passes_seen, recording)
        ref = weakref.ref(self)

        def finish() -> None:
            recorder = ref()
            if recorder is not None:
                recorder._guard(recorder._end_pass, current, False)

        current.schedule(finish)
        if recording and self.keep == "last" and self.records:
            # Let go of the last pass's tensors now rather than when this pass ends, so the
            # allocator can reuse that memory for this pass's gradients.
            self._keeper.recycle(self.records[-1])
        return current

    def _on_grad(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        current = self._pass
        if current is not None and current.end() is None:  # the last backward() raised midway
            self._end_pass(current, True)
            current = None
        if current is None:
            current = self._start_pass()
        if not current.recording:
            return
        entry = current.entries.get(name)
        if entry is not None:  # a second gradient for one leaf in one pass (reentrant backward)
            if entry.grad is not None:
                entry.grad = entry.grad + grad.detach()
            return
        hooks = param._backward_hooks  # is ours the last hook, seeing the final gradient?
        last = (
            hooks is None or len(hooks) < 2 or next(reversed(hooks)) == self._param_handles[name].id
        )
        old = param.grad
        accumulates = will_accumulate(self._nodes[name])
        incoming = norm = None
        if grad.requires_grad:  # create_graph=True: a plain copy, not the double-backward graph
            held: torch.Tensor | None = grad.detach().clone()
        elif old is not None or not accumulates or self._ddp or grad.layout != torch.strided:
            held = grad  # free: torch adds it into the existing .grad, or does not use .grad
        else:
            # torch moves this very tensor into .grad unless someone holds it, so do not hold it
            # (that would cost a copy); remember its address and measure it while it is hot.
            held = None
            incoming = (grad.data_ptr(), grad._version)
            if grad.numel() >= _HOT_NORM_NUMEL and not grad.is_cuda and not grad.is_complex():
                # on a GPU one fused kernel at the end beats launches
                norm = torch.linalg.vector_norm(grad, dtype=reduction_dtype(grad.dtype))
        before = None
        if old is not None and self.keep != "none":
            before = self._snapshot_before(name, old)
        version = old._version if old is not None else 0
        entry = Entry(held, before, accumulates, old, version, incoming, norm)
        current.entries[name] = entry
        if not last:
            self._follow_later_hooks(name, param, entry)

    def _follow_later_hooks(self, name: str, param: torch.Tensor, entry: Entry) -> None:
        """A hook registered after ours may change the gradient: take what gets accumulated.

        The accumulator node's pre-hooks run after every tensor hook, so a one-shot pre-hook
        sees the final gradient this pass; from the next pass on ours runs last again.
        """
        self._rehook_last(name, param)
        if not entry.accumulated:
            return  # torch.autograd.grad: the accumulator does not run (exact from next pass)
        handles: list[RemovableHandle] = []

        def final(grads: tuple[torch.Tensor, ...]) -> None:
            for handle in handles:
                handle.remove()
            grad = grads[0]
            if entry.grad is not None:
                entry.grad = grad.detach().clone() if grad.requires_grad else grad
            entry.norm = None

        handles.append(self._nodes[name].register_prehook(final))

    def _snapshot_before(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        snapshot = self._keeper.copy(name, grad)  # this pass is about to add into .grad in place
        last = self._last_record.pop(name, None)
        if last is not None:  # copy-on-write: the last record may hold this very .grad
            last._replace(grad, snapshot)
        return snapshot

    def _before_forward(self) -> None:
        current = self._pass
        if current is not None and current.end() is None:
            self._end_pass(current, True)
        self._sync()
        # A hook registered since the last pass runs after ours: move ours last now, so even
        # torch.autograd.grad (which runs no accumulator pre-hook) sees the final gradient.
        params = self.names.params
        moved = [
            name
            for name, handle in self._param_handles.items()
            if len(hooks := params[name]._backward_hooks or ()) > 1
            and next(reversed(hooks)) != handle.id
            and params[name].requires_grad  # torch refuses hooks on frozen tensors
        ]
        for name in moved:
            self._rehook_last(name, params[name])
        if self.keep == "last" and not self.copy and self.records:
            self._keeper.release_orphans(self.records[-1], self.names.params)

    # ------------------------------------------------------------------------- end of a pass
    def _end_pass(self, current: Pass, failed: bool) -> None:
        if self._pass is not current:
            return  # already ended (as failed, by a later look)
        self._pass = None
        if failed:
            current.cancel()
        if not current.recording:
            return
        self._sync()
        scale = self._loss_scale()
        records: dict[str, GradRecord] = {}
        sources: list[torch.Tensor] = []
        known: list[torch.Tensor | None] = []
        for name, entry in current.entries.items():
            param = self.names.params.get(name)
            if param is None or (failed and not arrived(entry, param)):
                continue
            grad_record, source, norm = make_grad_record(
                name,
                param,
                entry,
                current.index,
                scale,
                self._aliases[name],
                keep=self.keep,
                copy=self._keeper.copy if self.copy else None,
                ddp=self._ddp,
            )
            if grad_record.accumulated and self.keep != "none" and param.grad is not None:
                self._last_record[name] = grad_record  # its after may be .grad itself
            records[name] = grad_record
            sources.append(source if source is not None else torch.zeros(0))
            known.append(norm)
        self._read_stats(list(records.values()), sources, known, scale)
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
            failed=failed,
        )
        self._replaced = []
        oldest = self.records[0] if len(self.records) == self.records.maxlen else None
        self.records.append(backward)
        if failed:
            self.notes.append(
                f"backward pass {current.index} raised before it finished; it is recorded with "
                f"the {len(records)} gradient(s) that arrived (record.failed)"
            )
        if self.keep == "all":
            reached = self._keeper.bound_reached
            self._keeper.added(backward, oldest)
            if self._keeper.bound_reached and not reached:
                self.notes.append(
                    f'keep="all" reached max_bytes={self.max_bytes:,}: the oldest passes let go '
                    f'of their tensors (their statistics stay; record.dropped == "max_bytes"); '
                    f"raise max_bytes= or lower history= to keep more"
                )

    def _read_stats(
        self,
        records: list[GradRecord],
        sources: list[torch.Tensor],
        known: list[torch.Tensor | None],
        scale: float | None,
    ) -> None:
        """Give each record its norm and NaN/Inf counts, now or, on CUDA, when first read.

        Reading the norms back on a CUDA device would wait for the whole backward pass; instead
        they travel asynchronously and are read at the latest when the next pass ends, by which
        time they have long arrived (so the watch holds at most one pass in flight).
        """
        if self._in_flight is not None:  # frees the host buffers for this pass's results
            self._in_flight.wait()
        hot = None if known.count(None) == len(known) else known
        reading = Reading(sources, hot, copy_for=self._host_copy)
        self._in_flight = reading if reading.pending else None
        for slot, record in enumerate(records):
            record._reading, record._slot = reading, slot
        if scale is not None:
            rescaled = scaler_moved(self.scaler)
            for record in records:
                if record.accumulated and record._source_version is not None:
                    record._rescaled = rescaled

    def _host_copy(self, device: torch.device) -> HostCopy:
        copy = self._copies.get(device)
        if copy is None:
            copy = self._copies[device] = host_copy_for(device)
        return copy

    def _loss_scale(self) -> float | None:
        if self.scaler is None or not getattr(self.scaler, "is_enabled", lambda: True)():
            return None
        return float(self.scaler.get_scale())
