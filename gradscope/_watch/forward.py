"""Forward-pass evidence for the diagnosis: where a NaN/Inf was born, which modules ran.

Every module call's output, and each input not already checked as an earlier call's output, is
reduced to one on-device sum (float32; a NaN or Inf anywhere makes it non-finite). The sums of
one outermost call (one forward pass) are stacked when it returns and read once, when the
backward pass ends, the next forward pass ends or someone asks: no host sync per module (on a
GPU they travel asynchronously, through the HostCopy seam of ``reading.host_copy_for``). A
``sum`` is the cheapest reduction that sees every element (``isfinite(t).all()`` was 15-60x
slower on CPU); a float32 sum of finite values can only overflow when activations are near
1e38, which is a problem too.

The first non-finite sum in execution order says where the value was born: in the data given to
the model (``input``), in a module's own code after its children returned finite values
(``output``), or in a module's own code before it called a child (``before``). The op inside
that code, or the backward node where a NaN/Inf was born from finite values, is found once, the
first time, by running that pass again (:mod:`.replay`) as it ends, before the optimizer applies
NaN gradients to the weights. Until then the monitor keeps the newest pass's inputs and random
state (about 2 us a pass); a healthy run pays for the sums and that alone.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._graph.module_tags import share_hooks
from .._hooks import CopySafe
from .forward_hooks import post_hook, pre_hook
from .forward_pass import (
    IN,
    OUT,
    REDUCERS,
    BackwardOrigin,
    ForwardOrigin,
    ForwardRecord,
    LivePass,
    PendingPass,
    Reducer,
    floating_tensors,
)
from .replay import Held, find_backward_origin, random_states, replay
from .tracer import ArmedMode, CutTrace, OpSite

__all__ = ["BackwardOrigin", "ForwardMonitor", "ForwardOrigin", "ForwardRecord"]

# check runs for every module call: what it looks up often is bound once here.
_STRIDED = torch.strided
_ref = weakref.ref
_device_of = operator.attrgetter("device")
_NO_MODULES: frozenset[str] = frozenset()


class ForwardMonitor:
    """Hooks on every module of ``root``; one :class:`ForwardRecord` per forward pass.

    Hooks hold the monitor weakly and their errors go to ``errors`` (the watch's list), never
    into the user's forward pass.
    """

    def __init__(
        self, root: nn.Module, errors: list[BaseException], history: int | None = 1000
    ) -> None:
        self.errors = errors
        named = list(root.named_modules())
        self.paths = [path for path, _ in named]
        # Strong references, like the watch's recorder holds the model; dropped on close.
        self._modules: list[nn.Module] = [m for _, m in named]
        self.records: deque[ForwardRecord] = deque(maxlen=history)
        self.first_bad: ForwardRecord | None = None  # kept when history moves past it
        self.bad_count = 0
        self.forwards = 0
        self.order: list[str] = []  # module paths in first-call order
        self._ordered: set[int] = set()
        self._ordered_from: list[int] = []  # the calls of the pass order was last brought up from
        # The hooks' state (forward_hooks.py reads and updates it on every module call): the
        # pass under way, the module calls in progress (indices into paths), whether a replay
        # runs, and the op-level tracer while it is armed for this pass.
        self.live_pass: LivePass | None = None
        self.stack: list[int] = []
        self._pending: list[PendingPass] = []
        self._unpaired: list[ForwardRecord] = []  # forwards since the last backward pass
        self._unpaired_pending: list[PendingPass] = []  # the same, their sums not read yet
        self._last_held: Held | None = None
        self._to_locate: tuple[int, Held, int] | None = None  # the bad pass to replay, when safe
        self._last_called: frozenset[str] = frozenset()
        self._last_called_ks: list[int] = []  # the module indices _last_called was made from
        self.replaying = False
        self.replay_outputs: list[torch.Tensor] = []
        self.armed_mode: ArmedMode | None = None
        self.mode = ArmedMode(self)
        self.located: OpSite | None = None  # the op where the first NaN/Inf was born
        self.locate_tried = False
        self.locate_error: str | None = None
        self.backward: BackwardOrigin | None = None  # where the first NaN gradient was born
        self.traces: dict[str, CutTrace] = {}
        self._handles: list[RemovableHandle] = []
        ref = weakref.ref(self)
        for k, (_, module) in enumerate(named):
            # inside the module-tagging hooks where there are some: one pair of hooks, not two
            self._handles.append(
                share_hooks(module, CopySafe(pre_hook, ref, k), CopySafe(post_hook, ref, k))
            )

    # ----------------------------------------------------------------------------- hooks
    # forward_hooks.pre_hook and post_hook run on every module call; they call these.
    @contextmanager
    def replaying_pass(self) -> Iterator[None]:
        """While the body runs, the hooks only follow the module calls (``stack``, for the
        tracer) and collect outputs that require grad into ``replay_outputs``: no checks."""
        self.replaying = True
        self.stack.clear()
        try:
            yield
        finally:
            self.replaying = False
            self.stack.clear()

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as error:  # never break the user's forward; surfaced via watch.errors
            self.errors.append(error)

    def check_all(self, live: LivePass, value: Any, owner: int, k: int, kind: int) -> None:
        """:meth:`check` each floating tensor of a module's inputs or output."""
        for t in floating_tensors(value):
            self.check(live, t, owner, k, kind)

    def check(self, live: LivePass, t: torch.Tensor, owner: int, k: int, kind: int) -> None:
        """Sum ``t`` (event ``(owner, k, kind)``) unless this pass summed it already, unchanged."""
        reduce = REDUCERS[t.dtype]
        if reduce is None or t.layout is not _STRIDED:
            return
        key = id(t)
        seen = live.seen.get(key)
        if seen is not None and seen[0]() is t and seen[1] == t._version:
            return
        if t.numel() == 0 or t.is_meta:
            return
        if self.armed_mode is None:
            live.sums.append(reduce(t))
        else:
            self._sum_quietly(live, t, reduce)
        live.events.append((owner, k, kind))
        live.seen[key] = (_ref(t), t._version)

    def _sum_quietly(self, live: LivePass, t: torch.Tensor, reduce: Reducer) -> None:
        """The sum, while the tracer is on: it lets gradscope's own ops pass unchecked."""
        mode = self.armed_mode
        assert mode is not None
        mode.busy = True
        try:
            live.sums.append(reduce(t))
        finally:
            mode.busy = False

    def _note_order(self, called: list[int]) -> None:
        """Add the modules of one pass's ``called`` not seen before to :attr:`order`."""
        self._ordered_from = called
        for k in called:
            if k not in self._ordered:
                self._ordered.add(k)
                self.order.append(self.paths[k])

    # ----------------------------------------------------------------------------- passes
    def _holding(self) -> bool:
        """Whether a forward pass should keep what a replay needs (until both are answered)."""
        forward_open = self.located is None and not self.locate_tried
        return forward_open or self.backward is None

    def begin(self, k: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LivePass:
        self.stack.clear()
        if self.live_pass is not None:  # a pass whose outermost call never returned
            self._note_order(self.live_pass.called)
        self.resolve(wait=False)
        self.forwards += 1
        held = None
        if self._holding():
            tensors = list(floating_tensors((args, kwargs) if kwargs else args))
            held = Held(self._modules[k], args, dict(kwargs), random_states(tensors))
        self._last_held = None  # the pass that keeps a replay's inputs is this one now
        live = self.live_pass = LivePass(self.forwards, k, torch.is_grad_enabled(), held)
        if self.mode.armed():
            self.armed_mode = self.mode
            self.mode.start()
        return live

    def finish(self, live: LivePass, output: Any) -> None:
        self.live_pass = None
        if live.called != self._ordered_from:  # usually the same modules as the last pass
            self._note_order(live.called)
        mode, self.armed_mode = self.armed_mode, None
        if mode is not None:
            mode.stop()
        held = live.held
        if held is not None:
            outputs = [t for t in floating_tensors(output) if t.requires_grad]
            if outputs:
                held.hook_outputs(outputs)
        stacked = None
        if live.sums:
            devices = set(map(_device_of, live.sums))
            if len(devices) == 1:
                stacked = torch.stack(live.sums)
            else:  # a model split over devices: gather the flags on the first one
                first = live.sums[0].device
                stacked = torch.stack([s.to(first) for s in live.sums])
        live.sums = []
        live.seen = {}
        # At most one pass in flight, as for the gradient statistics: the sums of the passes
        # before this one were copied before this pass ran, so waiting for them costs nothing
        # on a GPU, and what a replay of them needs is not held longer than that.
        self.resolve(wait=True)
        pending = PendingPass(live, stacked)
        self._pending.append(pending)
        self._unpaired_pending.append(pending)

    def resolve(self, wait: bool = True) -> None:
        """Read the sums of finished forward passes (all of them, or those already arrived)."""
        while self._pending and (wait or self._pending[0].ready()):
            pending = self._pending.pop(0)
            self._store(pending, pending.values())
            if not self._pending:
                self._last_held = pending.held
            pending.held = None

    def _store(self, pending: PendingPass, values: list[float]) -> None:
        origin = None
        output_finite = True
        input_sum = values[0] if values and pending.events[0][0] < 0 else None
        # One NaN/Inf makes the (float64) total non-finite; finite float32 sums cannot overflow
        # it. Only a bad pass looks at its sums one by one.
        if not math.isfinite(sum(values)):
            origin, output_finite = self._first_nonfinite(pending, values)
        if pending.called == self._last_called_ks:
            called = self._last_called  # one shared set for the usual identical passes
        else:
            called = frozenset(self.paths[k] for k in pending.called)
            if called == self._last_called:
                called = self._last_called
            self._last_called, self._last_called_ks = called, pending.called
        no_grad = (
            frozenset(self.paths[k] for k in pending.no_grad) if pending.no_grad else _NO_MODULES
        )
        record = ForwardRecord(
            index=pending.index,
            root=self.paths[pending.root],
            grad_enabled=pending.grad_enabled,
            called=called,
            no_grad=no_grad,
            origin=origin,
            output_finite=output_finite,
            input_sum=input_sum,
            passes=pending.passes,
        )
        self.records.append(record)
        if pending in self._unpaired_pending:  # no backward pass since: pair it with the next
            self._unpaired_pending.remove(pending)
            self._unpaired.append(record)
        if origin is not None:
            self.bad_count += 1
            if self.first_bad is None:
                self.first_bad = record
            if (
                origin.where != "input"
                and self.located is None
                and not self.locate_tried
                and self._to_locate is None
                and pending.held is not None
            ):
                self._to_locate = (pending.index, pending.held, self.paths.index(origin.module))

    def _first_nonfinite(
        self, pending: PendingPass, values: list[float]
    ) -> tuple[ForwardOrigin | None, bool]:
        """Where the first non-finite sum of a pass was made; whether the pass's output was
        finite."""
        origin = None
        output_finite = True
        for (owner, k, kind), value in zip(pending.events, values, strict=True):
            if math.isfinite(value):
                continue
            if origin is None:
                if kind == IN and owner < 0:
                    origin = ForwardOrigin(self.paths[k], "input")
                elif kind == IN:
                    origin = ForwardOrigin(self.paths[owner], "before", self.paths[k])
                else:
                    origin = ForwardOrigin(self.paths[k], "output")
            if kind == OUT and k == pending.root:
                output_finite = False
        return origin, output_finite

    def _locate_when_safe(self) -> None:
        """Replay the first bad pass once no forward pass waits for its backward.

        A replay restores buffers in place: done while a forward pass's graph is still live it
        could break that graph's backward, so it waits for the end of a backward pass (or a read
        with every forward pass answered): on a CPU the end of the bad pass's own backward.
        """
        if self._to_locate is None or self._unpaired or self._unpaired_pending or self.live_pass:
            return
        index, held, target = self._to_locate
        self._to_locate = None
        self._locate(index, held, target)

    def _locate(self, index: int, held: Held, target: int) -> None:
        """Run forward pass ``index`` again, checking each op of ``target``'s own code."""
        self.mode.arm_locate(target)
        self.armed_mode = self.mode
        self.mode.start(replay=index)
        try:
            replay(self, held, lambda: held.module(*held.args, **held.kwargs), grad=False)
        except Exception as error:  # the model itself refused (it asserts finite values?)
            self.locate_error = f"{type(error).__name__}: {error}"
        finally:
            self.mode.stop()
            self.armed_mode = None

    # ----------------------------------------------------------------------------- backward
    def after_backward(
        self,
        index: int,
        missing: list[str],
        nonfinite: bool | None,
        params: Mapping[str, torch.Tensor],
        wait: bool,
    ) -> list[ForwardRecord]:
        """Pair the forward passes since the last backward with pass ``index``; arm the tracer
        for parameters that got no gradient; find where a NaN/Inf gradient was born from a
        finite forward pass (``nonfinite``: None when it is not known yet, on a GPU)."""
        # A NaN/Inf gradient is rare: then wait for the forward sums of this pass (on a GPU
        # they may still be on their way), to tell a forward origin from a backward one.
        self.resolve(wait=wait or bool(nonfinite))
        # A pass under no_grad made no graph: it cannot be part of this backward pass.
        paired = [r for r in self._unpaired if r.grad_enabled]
        self._unpaired = []
        for record in paired:
            record.passes.append(index)
        for pending in self._unpaired_pending:  # read later: their records take the list
            if pending.grad_enabled:
                pending.passes.append(index)
        self._unpaired_pending = []
        self._locate_when_safe()
        if missing:
            self.mode.arm_trace({n: params[n] for n in missing if n not in self.traces})
        ready = not self._pending  # on a GPU the sums may still be on their way
        if nonfinite and ready and self.backward is None and paired and self.first_bad is None:
            held = self._last_held
            if held is not None and paired[-1].grad_enabled:
                self.backward = find_backward_origin(self, index, held)
        return paired

    def settle(self) -> None:
        """Read every pass's sums and, when it is safe, replay the first bad pass."""
        self.resolve(wait=True)
        self._locate_when_safe()

    def close(self) -> None:
        if self._handles:  # the replay needs the module hooks
            self._guard(self.settle)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.armed_mode is not None:
            self.armed_mode.stop()
            self.armed_mode = None
        self.resolve(wait=True)
        self._to_locate = None
        if self.live_pass is not None:  # closed during a forward pass
            self._note_order(self.live_pass.called)
        for pending in self._pending:
            pending.held = None
        self.live_pass = None
        self._last_held = None
        self._modules = []
        self.mode.arm_trace({})
