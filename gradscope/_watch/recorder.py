"""The recording machinery behind watch(): per-parameter hooks, one record per backward pass.

Recording only: which parameters are watched (following the module as it changes) is in
``following``, when a pass starts and ends in ``passes``, what ending a pass makes of it in
``ending``, how its records are built in ``assembly``, which tensors are kept in ``keeping``,
the statistics in ``reading`` and ``stats``, the records in ``records``, the functions torch
calls in ``trampolines``, FSDP2's sharded parameters in ``sharded``, and the public object in
``watch``, which owns one recorder (tables and pages are in ``gradscope._report``). Only the
watch holds the recorder, and hooks hold it weakly, so dropping the watch drops the recorder,
which removes its hooks: neither can keep the model alive. Errors inside a hook are stored on
the recorder, never raised out of ``backward()``. The hooks run in every pass: a parameter
whose ``.grad`` was None gets one small entry; the end of the pass builds the records in one
loop and takes the norms in one fused call.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._distributed.layout import layout_of, sync_pending
from .._distributed.shards import local_shard
from .._graph.module_tags import install_module_tagging
from .._hooks import CopySafe
from .._naming import ParamNames, unwrap_module
from .assembly import loss_scale
from .ending import StatsReader, pass_record
from .following import Followed
from .keeping import Keep, Keeper, default_max_bytes
from .passes import Entry, Pass, take_accumulated
from .records import BackwardRecord, GradRecord
from .sharded import register
from .stats import reduction_dtype
from .trampolines import after_forward, before_forward, on_grad, on_shard

__all__ = ["Keep", "Recorder"]

# Gradients at least this large get their norm taken inside the hook, while still in cache;
# smaller ones are cheaper in one fused kernel at the end of the pass.
_HOT_NORM_NUMEL = 1 << 16
_STRIDED = torch.strided
_vector_norm = torch.linalg.vector_norm
_will_execute = torch._C._will_engine_execute_node
# What a closed recorder's last hooks see: a pass that records nothing and is never ended.
_NOT_RECORDED = Pass(0, recording=False)


def _remove_handles(handles: dict[str, RemovableHandle], extra: list[RemovableHandle]) -> None:
    for handle in handles.values():
        handle.remove()
    handles.clear()
    for handle in extra:
        handle.remove()
    extra.clear()


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
        # DDP, FSDP2 or neither; refuses (raises) what the hooks cannot follow, before any hook.
        self._layout = layout_of(module)
        self._sharded = self._layout.kind == "fsdp2"
        self._befores: dict[str, torch.Tensor] = {}  # FSDP2: shards taken when forward started
        self._synchronising: bool | None = None
        self._module: nn.Module | None = module
        self._module_ref = weakref.ref(module)
        self.every = every
        self.scaler = scaler
        # DDP(gradient_as_bucket_view=True) writes every pass into the same buckets that .grad
        # views, even after zero_grad(set_to_none=True): records kept past the next pass need
        # copies of their own.
        self.copy = copy or (
            keep == "all" and self._layout.kind == "ddp" and bool(module.gradient_as_bucket_view)
        )
        root = unwrap_module(module)
        self._root: nn.Module | None = root
        self._root_type = type(root).__name__
        self._ddp = self._layout.kind == "ddp"
        self.records: deque[BackwardRecord] = deque(maxlen=history)
        self._other_handles: list[RemovableHandle] = []
        self._pass: Pass | None = None
        self.passes_seen = 0
        # The newest record of each parameter, whose ``after`` may be ``.grad`` itself.
        self._last_record: dict[str, GradRecord] = {}
        self._reader = StatsReader()  # the newest pass's statistics, if still deferred
        self.errors: list[BaseException] = []
        # Called with each new record and the current name -> parameter mapping (the watch's
        # diagnosis evidence, see _watch/monitors.py); each call is guarded like a hook.
        self.end_of_pass: list[Callable[[BackwardRecord, Mapping[str, torch.Tensor]], None]] = []
        self.notes: list[str] = []  # things to tell the user once, as warnings, on the next read
        self.closed = False
        self.keep: Keep = keep
        self._keeper = Keeper(max_bytes or 0)  # pragma: no mutate
        # (0 stands for None until replaced below; max_bytes >= 1)
        self._followed = Followed(
            root, include, exclude, self._register, self._forget, nodes=not self._sharded
        )
        self._nodes = self._followed.nodes  # the same dict, for the hot path
        self._handles = self._followed.handles
        self._finalizer = weakref.finalize(
            self, _remove_handles, self._followed.handles, self._other_handles
        )
        self._followed.sync(force=True)
        if max_bytes is None:
            self._keeper.max_bytes = default_max_bytes(self.names.params)

    @property
    def names(self) -> ParamNames:
        """The watched parameters by name, as of the last sync."""
        return self._followed.names

    @property
    def max_bytes(self) -> int:
        return self._keeper.max_bytes

    def install_forward_hooks(self, module: nn.Module, tag_modules: bool) -> None:
        hook = CopySafe(before_forward, weakref.ref(self))
        # FSDP2's own pre-hook unshards the root's parameters: ours runs first, to see the shards
        pre = module.register_forward_pre_hook(hook, prepend=self._sharded)
        self._other_handles.append(pre)
        if self._sharded:  # FSDP2: a pass that writes no .grad (no sync) still starts
            after = CopySafe(after_forward, weakref.ref(self))
            self._other_handles.append(module.register_forward_hook(after))
        # graph() then knows which module made each node (see _module_tags). Not under
        # torch.compile: its backward is one node anyway, and the hooks would break its graph.
        if tag_modules and self._root is not None and not hasattr(module, "_orig_mod"):
            self._other_handles.extend(install_module_tagging(self._root))

    def caught(self, error: BaseException) -> None:
        """An error inside a hook: stored, surfaced via ``.errors``, never raised from backward."""
        self.errors.append(error)
        if self._pass is not None:
            self._pass.errors.append(error)

    def guard(self, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as error:
            self.caught(error)

    @property
    def module(self) -> nn.Module | None:
        """The watched module; None once closed and the module was collected."""
        return self._module if self._module is not None else self._module_ref()

    @property
    def root(self) -> nn.Module | None:
        """The user's own model inside DDP and compile wrappers; None once closed."""
        return self._root

    @property
    def module_type(self) -> str:
        """The class name of the watched model (unwrapped from DDP/compile), kept after close."""
        return self._root_type

    @property
    def hooked(self) -> int:
        """How many parameters carry a hook of this recorder right now."""
        return len(self._handles)

    def poll(self) -> None:
        """End a pass whose ``backward()`` raised (before a read, a forward or a new pass)."""
        current = self._pass
        if current is not None and current.end() is None:
            self.guard(self._end_pass, current, True)

    def close(self) -> None:
        """Remove every hook (idempotent) and let go of the model. Records stay readable."""
        self.poll()
        self._reader.wait()  # read back the last pass's statistics while we can
        if self._pass is not None:
            self._pass.cancel()
        self._finalizer()
        self._pass = None
        self.closed = True
        # A closed recorder must never keep the model alive (records hold their own tensors).
        self._module = self._root = None
        self._followed.close()
        self._last_record.clear()
        self._keeper.clear()

    def _register(self, name: str, param: torch.Tensor) -> RemovableHandle:
        # A tensor hook sees the incoming gradient while .grad still holds the old one, fires
        # under torch.compile and torch.autograd.grad, and once with the sum for tied weights.
        # It does not fire for FSDP2/DTensor parameters: they get a post-accumulate hook (see
        # ``sharded``). Parameters drop their hooks when copied or pickled.
        if self._sharded:
            return register(param, CopySafe(on_shard, weakref.ref(self), name))
        hook = CopySafe(on_grad, weakref.ref(self), name, param)
        handle: RemovableHandle = param.register_hook(hook)  # type: ignore[no-untyped-call]
        return handle

    def _forget(self, name: str) -> None:
        self._last_record.pop(name, None)
        self._keeper.forget(name)

    # ------------------------------------------------------------------------- during a pass
    def _start_pass(self) -> Pass:
        self.passes_seen += 1
        recording = (self.passes_seen - 1) % self.every == 0
        current = self._pass = Pass(self.passes_seen, recording)
        ref = weakref.ref(self)

        def finish() -> None:
            recorder = ref()
            if recorder is not None:
                recorder.guard(recorder._end_pass, current, False)

        current.schedule(finish)
        if recording and self.keep == "last" and self.records:
            # Let go of the last pass's tensors now rather than when this pass ends, so the
            # allocator can reuse that memory for this pass's gradients.
            self._keeper.recycle(self.records[-1], self.names.params)
        return current

    def current_pass(self) -> Pass:
        current = self._pass
        if current is None or current.end() is None:
            if current is not None:  # the last backward() raised midway
                self._end_pass(current, True)
            if self.closed:  # a hook torch had picked up before close() removed it
                return _NOT_RECORDED
            current = self._start_pass()
        return current

    def on_shard(self, name: str, param: torch.Tensor) -> None:
        """FSDP2 wrote this rank's shard of ``param``'s gradient (see ``sharded``)."""
        current = self.current_pass()
        if current.recording and name not in current.entries:  # pragma: no mutate
            # (FSDP2's hook runs once per parameter and pass; a skipped pass's entries are unread)
            # a shard's record reads only ``before``: sharded assembly never asks ``arrived``
            before = self._befores.pop(name, None)
            current.entries[name] = Entry(None, before, shard=param)

    def on_grad(self, name: str, param: torch.Tensor, grad: torch.Tensor) -> None:
        current = self._pass  # (current_pass inlined: this runs for every parameter)
        if current is None or current.end() is None:
            if current is not None:  # the last backward() raised midway
                self._end_pass(current, True)
            if self.closed:  # a hook torch had picked up before close() removed it
                return
            current = self._start_pass()
        if not current.recording:
            return
        entries = current.entries
        if name in entries:  # a second gradient for one leaf in one pass (reentrant backward)
            entry = entries[name]
            if entry.grad is not None:
                entry.grad = entry.grad + grad.detach()
            return
        old = param.grad
        try:  # whether this pass writes .grad (not under torch.autograd.grad)
            accumulates = _will_execute(self._nodes[name])
        except RuntimeError:  # torch refuses the question for leaves during autograd.grad
            accumulates = False
        if old is None and accumulates and not grad.requires_grad:
            # hold the gradient (torch then copies it into .grad) where .grad may be gone at the
            # end of the pass: a post-accumulate hook (optimizer in backward) may clear it
            if self._ddp or grad.layout is not _STRIDED or param._post_accumulate_grad_hooks:
                entry = Entry(grad, None, True)
            else:
                # torch moves this very tensor into .grad unless someone holds it, so do not
                # hold it (that would cost a copy); remember its address and measure it while
                # it is hot (on a GPU one fused kernel at the end beats launches).
                norm = None
                if grad.numel() >= _HOT_NORM_NUMEL and not grad.is_cuda and not grad.is_complex():
                    norm = _vector_norm(grad, dtype=reduction_dtype(grad.dtype))
                entry = Entry(
                    None, None, True, incoming=(grad.data_ptr(), grad._version), norm=norm
                )
        else:
            entry = self._held_entry(name, grad, old, accumulates)
        entries[name] = entry
        hooks = param._backward_hooks  # is ours the last hook, seeing the final gradient?
        if (
            hooks is not None
            and len(hooks) > 1  # pragma: no mutate (a shortcut: with ours alone, the next is False)
            and next(reversed(hooks)) != self._handles[name].id
        ):
            self._follow_later_hooks(name, param, entry)

    def _held_entry(
        self, name: str, grad: torch.Tensor, old: torch.Tensor | None, accumulates: bool
    ) -> Entry:
        """What to keep of a gradient that torch adds into ``.grad``, or does not store there."""
        # create_graph=True: a plain copy, not the double-backward graph; otherwise holding it
        # is free: torch adds it into the existing .grad, or does not use .grad
        held = grad.detach().clone() if grad.requires_grad else grad
        if old is None:
            return Entry(held, None, accumulates)
        before = self._snapshot_before(name, old) if self.keep != "none" else None
        return Entry(held, before, accumulates, old, old._version)

    def _follow_later_hooks(self, name: str, param: torch.Tensor, entry: Entry) -> None:
        """A hook registered after ours may change the gradient: take what gets accumulated.

        The accumulator node's pre-hooks run after every tensor hook, so a one-shot pre-hook
        sees the final gradient this pass; from the next pass on ours runs last again.
        """
        self._followed.rehook_last(name, param)
        if entry.accumulated:  # under torch.autograd.grad the accumulator does not run
            take_accumulated(self._nodes[name], entry)  # (exact from the next pass on)

    def _snapshot_before(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        snapshot = self._keeper.copy(name, grad)  # this pass is about to add into .grad in place
        last = self._last_record.pop(name, None)
        if last is not None:  # copy-on-write: the last record may hold this very .grad
            last.swap_for_copy(grad, snapshot)
        return snapshot

    def before_forward(self, module: nn.Module) -> None:
        """The watched ``module`` (as wrapped: DDP, FSDP2) is about to run forward."""
        current = self._pass
        if current is not None and current.end() is None:
            self._end_pass(current, True)
        followed = self._followed
        followed.sync()
        if self._layout.kind != "local":  # pragma: no mutate (saves a call returning None)
            self._synchronising = sync_pending(module, self._layout)
        if self._sharded:
            self._snapshot_shards()
        else:
            # A hook registered since the last pass runs after ours: move ours last now, so
            # even torch.autograd.grad (which runs no accumulator pre-hook) sees the final one.
            followed.move_ours_last()
        if self.keep == "last" and not self.copy and self.records:
            self._keeper.release_orphans(self.records[-1], followed.names.params)

    def _snapshot_shards(self) -> None:
        """FSDP2 adds into the old shard before our hook runs: take ``before`` now."""
        self._befores.clear()
        if self.keep == "none":
            return
        for name, param in self.names.params.items():
            if param.grad is not None:
                self._befores[name] = self._snapshot_before(name, local_shard(param.grad))

    # ------------------------------------------------------------------------- end of a pass
    def _end_pass(self, current: Pass, failed: bool) -> None:
        if self._pass is not current:
            return  # already ended (as failed, by a later look)
        self._pass = None
        if failed:
            current.cancel()
        if not current.recording:
            return
        self._followed.sync()
        keep = self.keep
        backward = pass_record(
            current,
            failed,
            self._followed,
            self._layout,
            scale=loss_scale(self.scaler),
            scaler=self.scaler,
            keep=keep,
            copy=self._keeper.copy if self.copy else None,
            live_records=self._last_record,
            synchronised=self._synchronising,
            reader=self._reader,
        )
        oldest = self.records[0] if len(self.records) == self.records.maxlen else None
        self.records.append(backward)
        if failed:
            self.notes.append(
                f"backward pass {backward.index} raised before it finished; it is recorded "
                f"with the {len(backward.grads)} gradient(s) that arrived (record.failed)"
            )
        if keep == "all":
            note = self._keeper.added(backward, oldest)
            if note:
                self.notes.append(note)
        for listener in self.end_of_pass:
            self.guard(listener, backward, self.names.params)
