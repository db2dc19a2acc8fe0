"""Optimizer-step evidence for the diagnosis: how far each parameter moved, against its size.

``watch(net, optimizer=opt)`` hooks ``opt.step`` (``register_step_pre_hook`` and
``register_step_post_hook``). Around each step it records, for every watched parameter the
optimizer holds: the norm of the update ``|Δp|``, the norm of the weight ``|p|``, how many
elements had a non-zero gradient and how many of those did not move. All four come from up to
``sampling.SAMPLE`` elements per parameter, evenly spread over it (every element when it has
fewer), in one fused pass on the device and one host transfer per step, read when first
needed: a full copy of every weight before each step would be one more pass over all of them
(about 5% of an MLP training step on CPU), the sample is a few small kernels. The ratio
``|Δp| / |p|`` over the same elements estimates the update-to-weight ratio of the whole tensor.

It also notes each group's learning rate and, when ``.grad`` was changed between the end of the
backward pass and the step (``clip_grad_norm_``, ``GradScaler.unscale_``, a hand-written
rescale), the gradients' total norm at the step: its ratio to the norm recorded when backward
ended is the clip coefficient. A step that GradScaler skips never calls ``optimizer.step()``, so
it leaves no record here: the diagnosis counts skipped steps from that.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .sampling import sample as _sample

__all__ = ["StepMonitor", "StepRecord", "held_names"]


def held_names(optimizer: Any, names: Mapping[int, str]) -> list[str]:
    """Names of the watched parameters ``optimizer`` holds, in its groups' order."""
    out: list[str] = []
    for group in getattr(optimizer, "param_groups", ()):
        for p in group.get("params", ()):
            name = names.get(id(p))
            if name is not None:
                out.append(name)
    return out


def _lr(group: Mapping[str, Any]) -> float | None:
    lr = group.get("lr")
    if lr is None:
        return None
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


@dataclass
class StepRecord:
    """One ``optimizer.step()``: per held parameter, the sampled update and weight norms."""

    index: int  # steps seen by this watch (every optimizer counts)
    optimizer: int  # which of the watch's optimizers stepped
    after_pass: int  # backward passes seen when it stepped
    names: tuple[str, ...]
    lrs: tuple[float | None, ...]
    no_grad: tuple[str, ...]  # held parameters whose .grad was None (the optimizer skips them)
    modified: bool  # .grad changed between the end of backward and this step
    _stats: torch.Tensor | None = None
    _grad_norm: torch.Tensor | None = None
    _values: list[list[float]] | None = field(default=None, repr=False)
    _grad_norm_value: float | None = None

    def _read(self) -> list[list[float]]:
        if self._values is None:
            self._values = self._stats.tolist() if self._stats is not None else []
            self._stats = None
            if self._grad_norm is not None:
                self._grad_norm_value = float(self._grad_norm)
                self._grad_norm = None
        return self._values

    @property
    def update_norms(self) -> list[float]:
        """``|Δp|`` over each parameter's sampled elements."""
        return [row[0] ** 0.5 for row in self._read()]

    @property
    def weight_norms(self) -> list[float]:
        """``|p|`` after the step, over the same elements."""
        return [row[1] ** 0.5 for row in self._read()]

    @property
    def stuck(self) -> list[int]:
        """Sampled elements with a non-zero gradient that did not move."""
        return [int(row[2]) for row in self._read()]

    @property
    def with_grad(self) -> list[int]:
        """Sampled elements with a non-zero gradient."""
        return [int(row[3]) for row in self._read()]

    @property
    def grad_norm(self) -> float | None:
        """With ``modified``: the total norm of the held gradients when the step ran."""
        self._read()
        return self._grad_norm_value


class _Context:
    __slots__ = ("before", "grad_norm", "grads", "lrs", "modified", "names", "no_grad", "params")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.lrs: list[float | None] = []
        self.no_grad: list[str] = []
        self.before: torch.Tensor | None = None
        self.grads: torch.Tensor | None = None
        self.modified = False
        self.grad_norm: torch.Tensor | None = None


class StepMonitor:
    """Step hooks on each optimizer; one :class:`StepRecord` per step.

    ``params`` returns the watch's current name -> parameter mapping. Hooks hold the monitor
    weakly and the monitor holds the optimizers weakly (an optimizer leads back to the model,
    which a closed watch must not keep alive).
    """

    def __init__(
        self,
        optimizers: Sequence[Any],
        params: Callable[[], Mapping[str, torch.Tensor]],
        passes: Callable[[], int],
        errors: list[BaseException],
        history: int | None = 1000,
    ) -> None:
        self._optimizers = [weakref.ref(o) for o in optimizers]
        self.count = len(optimizers)
        self._params = params
        self._passes = passes
        self.errors = errors
        self.records: deque[StepRecord] = deque(maxlen=history)
        self.steps = 0
        self.held: list[list[str]] = [[] for _ in optimizers]  # refreshed at every step
        self._ids: tuple[int, dict[int, str]] = (0, {})
        self._segments: dict[tuple[int, ...], torch.Tensor] = {}
        self._context: dict[int, _Context] = {}
        self._versions: dict[str, tuple[int, int]] = {}  # .grad (id, version) when backward ended
        self._handles: list[RemovableHandle] = []
        ref = weakref.ref(self)
        for k, optimizer in enumerate(optimizers):
            self._handles.append(optimizer.register_step_pre_hook(_make_hook(ref, k, True)))
            self._handles.append(optimizer.register_step_post_hook(_make_hook(ref, k, False)))

    @property
    def optimizers(self) -> list[Any]:
        """The optimizers still alive."""
        alive = [ref() for ref in self._optimizers]
        return [o for o in alive if o is not None]

    def names_by_id(self) -> dict[int, str]:
        params = self._params()
        key = id(params)
        if self._ids[0] != key or len(self._ids[1]) != len(params):
            self._ids = (key, {id(p): name for name, p in params.items()})
        return self._ids[1]

    def refresh_held(self) -> None:
        """Which watched parameters each live optimizer holds now."""
        ids = self.names_by_id()
        for k, ref in enumerate(self._optimizers):
            optimizer = ref()
            if optimizer is not None:
                self.held[k] = held_names(optimizer, ids)

    # ----------------------------------------------------------------------------- hooks
    def after_backward(self, params: Mapping[str, torch.Tensor]) -> None:
        """Note each ``.grad`` (identity and version) as backward left it."""
        versions = self._versions
        versions.clear()
        for name, p in params.items():
            grad = p.grad
            if grad is not None:
                versions[name] = (id(grad), grad._version)

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            with torch.no_grad():
                fn(*args)
        except Exception as error:  # never break the user's step; surfaced via watch.errors
            self.errors.append(error)

    def _pre(self, k: int, optimizer: Any) -> None:
        ids = self.names_by_id()
        context = _Context()
        befores: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        modified = False
        held_grads: list[torch.Tensor] = []
        for group in optimizer.param_groups:
            lr = _lr(group)
            for p in group["params"]:
                name = ids.get(id(p))
                if name is None:
                    continue
                context.names.append(name)
                context.params.append(p)
                context.lrs.append(lr)
                sample = _sample(p.detach())
                befores.append(sample.float() if sample.dtype != torch.float32 else sample)
                grad = p.grad
                if grad is None:
                    context.no_grad.append(name)
                    grads.append(torch.zeros(sample.shape, device=sample.device))
                    continue
                held_grads.append(grad)
                seen = self._versions.get(name)
                if seen is not None and seen != (id(grad), grad._version):
                    modified = True
                g = _sample(grad.detach())
                grads.append(g.float() if g.dtype != torch.float32 else g)
        self.held[k] = list(context.names)
        if not context.names:
            return
        context.before = torch.cat(befores)  # a copy: the step changes the weights in place
        context.grads = torch.cat(grads)
        context.modified = modified
        if modified and held_grads:
            norms = torch._foreach_norm([g.detach() for g in held_grads], 2)
            context.grad_norm = torch.linalg.vector_norm(torch.stack(norms).double())
        self._context[k] = context

    def _post(self, k: int, optimizer: Any) -> None:
        context = self._context.pop(k, None)
        if context is None or context.before is None or context.grads is None:
            return
        samples = [_sample(p.detach()) for p in context.params]
        after = torch.cat([s.float() if s.dtype != torch.float32 else s for s in samples])
        counts = tuple(s.numel() for s in samples)
        segments = self._segments.get(counts)
        if segments is None or segments.device != after.device:
            sizes = torch.tensor(counts, device=after.device)
            segments = torch.repeat_interleave(
                torch.arange(len(counts), device=after.device), sizes
            )
            self._segments = {counts: segments}
        delta = after - context.before
        moving = context.grads != 0
        columns = torch.stack(
            [delta * delta, after * after, (moving & (delta == 0)).float(), moving.float()], 1
        )
        stats = torch.zeros(len(counts), 4, device=after.device).index_add_(0, segments, columns)
        self.steps += 1
        self.records.append(
            StepRecord(
                index=self.steps,
                optimizer=k,
                after_pass=self._passes(),
                names=tuple(context.names),
                lrs=tuple(context.lrs),
                no_grad=tuple(context.no_grad),
                modified=context.modified,
                _stats=stats,  # read (one transfer) when the diagnosis first asks
                _grad_norm=context.grad_norm,
            )
        )

    def close(self) -> None:
        self.refresh_held()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._context.clear()


def _make_hook(ref: weakref.ref[StepMonitor], k: int, pre: bool) -> Any:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        monitor = ref()
        if monitor is not None:
            monitor._guard(monitor._pre if pre else monitor._post, k, optimizer)

    return hook
