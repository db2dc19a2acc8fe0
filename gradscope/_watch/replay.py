"""Run one forward pass again to see where a NaN/Inf was born: once, the first time.

By the time anyone reads a training run, the first NaN has usually been applied to the weights
and every later pass is NaN from its first layer: the place it was born can only be seen in the
pass where it appeared. So the forward monitor keeps, for the newest forward pass, its inputs,
the random generators' states and (through a hook on each output) the gradient the loss sent
back into the model, until the first problem has been looked at. When that pass ends badly, and
before the optimizer steps, the pass is run again with the same inputs, random state and
buffers:

- a NaN/Inf born in **forward**: under ``torch.no_grad()``, with :mod:`.tracer` checking each op
  of the module whose own code made it;
- a NaN/Inf born in **backward** from finite values: with autograd on, the graph captured by
  :func:`gradscope.graph` (``grads=True``), and ``torch.autograd.grad`` from the outputs with
  the gradients the loss sent, for every module output (never for the parameters, so ``.grad``
  and the watch's records are not touched); the graph names the node (``first_nonfinite``);
- when the gradient the loss sent back is itself NaN/Inf, the loss is where it starts: nothing
  is run again.

Buffers (BatchNorm statistics) and random states are restored afterwards. The model's own
forward hooks run once more during a replay.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .forward_pass import BackwardOrigin, floating_tensors

if TYPE_CHECKING:
    from .forward import ForwardMonitor

__all__ = ["Held", "find_backward_origin", "random_states", "replay"]

RandomStates = tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]


def random_states(tensors: list[torch.Tensor]) -> RandomStates:
    """The CPU generator's state, and the CUDA generators' of the devices ``tensors`` are on."""
    devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in devices]


def _set_random_states(states: RandomStates) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    for device, state in cuda:
        torch.cuda.set_rng_state(state, device)


@dataclass
class Held:
    """What one forward pass keeps so that it can be run again."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    states: RandomStates
    output_grads: dict[int, torch.Tensor] = field(default_factory=dict)

    def hook_outputs(self, outputs: list[torch.Tensor]) -> None:
        """Keep the gradient that reaches each output (by position among those needing grad)."""
        ref = weakref.ref(self)
        for k, t in enumerate(outputs):
            t.register_hook(_keep(ref, k))  # type: ignore[no-untyped-call]

    def loss_gradient_finite(self) -> bool | None:
        """Whether the gradient the loss sent into the model was finite (None: none came)."""
        if not self.output_grads:
            return None
        return all(bool(torch.isfinite(g).all()) for g in self.output_grads.values())


def _keep(ref: weakref.ref[Held], k: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        held = ref()
        if held is not None:
            held.output_grads[k] = grad.detach()

    return hook


def replay(
    monitor: ForwardMonitor,
    held: Held,
    run: Callable[[], Any],
    *,
    grad: bool,
) -> None:
    """Call ``run`` with ``held``'s random state, then restore buffers and random states."""
    buffers = [(b, b.detach().clone()) for b in held.module.buffers()]
    tensors = [t for t in (*held.args, *held.kwargs.values()) if isinstance(t, torch.Tensor)]
    current = random_states(tensors)
    _set_random_states(held.states)
    try:
        with monitor.replaying_pass(), torch.set_grad_enabled(grad):
            run()
    finally:
        _set_random_states(current)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def find_backward_origin(monitor: ForwardMonitor, index: int, held: Held) -> BackwardOrigin:
    """Where a NaN/Inf gradient of pass ``index`` was born, by running that pass again with
    autograd on and sending back the gradient the loss sent (see the module docstring)."""
    from .._errors import GradscopeError
    from .._graph.build import graph  # only once a NaN gradient appears

    finite = held.loss_gradient_finite()
    if finite is None:
        return BackwardOrigin(index, False, note="no gradient reached the outputs")
    if not finite:
        return BackwardOrigin(index, True)
    found: dict[str, Any] = {}

    def run() -> None:
        monitor.replay_outputs = []
        out = held.module(*held.args, **held.kwargs)
        outputs = [t for t in floating_tensors(out) if t.requires_grad]
        inner = [t for t in monitor.replay_outputs if not any(t is o for o in outputs)]
        grads = [held.output_grads.get(k) for k in range(len(outputs))]
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
        if not pairs:
            return
        g = graph(*[o for o, _ in pairs], params=held.module, grads=True, saved=False)
        torch.autograd.grad(
            [o for o, _ in pairs],
            inner or [o for o, _ in pairs],
            [g_ for _, g_ in pairs],
            allow_unused=True,
        )
        found["graph"] = g

    try:
        replay(monitor, held, run, grad=True)
    except Exception as error:  # the replay failed: say so in the finding
        return BackwardOrigin(index, False, note=f"{type(error).__name__}: {error}")
    finally:
        monitor.replay_outputs = []
    g = found.get("graph")
    origin = None
    if g is not None:
        try:
            origins = g.nonfinite_origins
        except GradscopeError:
            origins = ()
        origin = origins[0] if origins else None
    note = None if origin is not None else "running the pass again gave finite gradients"
    return BackwardOrigin(index, False, origin, g, note)
