"""The statistics of one backward pass: computed where the gradients are, read when needed.

When a pass ends the recorder hands every recorded gradient to a :class:`Reading`, which launches
one fused norm kernel per (device, dtype) and brings the numbers to the host through a
:class:`HostCopy`:

- on a CPU at once (``CopyNow``): the few gradients whose norm is not finite, or whose float32
  norm may have under- or overflowed, are looked at again (NaN/Inf counts, a float64 norm) right
  then, while they still hold exactly what the pass left;
- on a CUDA device asynchronously (``CopyAsync``: pinned memory and an event), because reading
  would wait for the whole backward pass. Everything the read needs (norms accumulated in
  float64, NaN and Inf counts) is computed on the device *before* the copy, so the read never
  looks at a gradient again: by then the training loop may have zeroed, clipped or unscaled it.

``HostCopy`` is the seam between the two: tests inject one with a fake event so the deferred
path runs on every machine, not only where a GPU is.

Calling ``.item()`` per tensor would synchronise once per parameter (2.3-2.6x a training step
measured on CPU); ``_foreach_norm`` plus one transfer per pass costs a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Protocol

import torch

from .stats import (
    count_nonfinite,
    exact_norm,
    finite_part_norm,
    norm_source,
    reduction_dtype,
    robust_norms64,
    stat_view,
)

__all__ = ["CopyAsync", "CopyNow", "HostCopy", "Reading", "device_counts", "host_copy_for"]

# A float32 norm outside this range may have under- or overflowed in its squares: redo it in
# float64 (~13x slower on CPU, so only where it matters).
_SAFE_LOW, _SAFE_HIGH = 1e-15, 1e15
# Elements per temporary when counting NaN/Inf on a device (256 MiB of float32).
_CHUNK = 1 << 26

_dtype, _layout = attrgetter("dtype"), attrgetter("layout")
_requires_grad = attrgetter("requires_grad")
_get_device, _numel = torch.Tensor.get_device, torch.Tensor.numel

Stats = tuple[float, int, int]  # (norm, NaN count, Inf count) of the raw gradient


class Event(Protocol):
    def synchronize(self) -> None: ...


class HostCopy(Protocol):
    """Brings a small tensor of results to the host: now, or later behind an event."""

    deferred: bool

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, Event | None]: ...


class CopyNow:
    """The results are read at once (``tolist()`` waits for them)."""

    deferred = False

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, Event | None]:
        return values, None


class CopyAsync:
    """A non-blocking copy into pinned host memory, reused pass after pass, and a CUDA event.

    Pinned memory is slow to allocate, so one buffer per size is kept; the recorder reads a
    pass's results before the next pass starts a copy into the same buffer.
    """

    deferred = True

    # (every line below is marked: pinned memory and events need CUDA, so no CPU test reaches
    # them; tests/test_cuda.py runs them where a GPU is; CopyLater in tests/watch stands in)
    def __init__(self) -> None:
        self._pinned: dict[tuple[int, torch.dtype], torch.Tensor] = {}  # pragma: no mutate (CUDA)

    def __call__(self, values: torch.Tensor) -> tuple[torch.Tensor, Event | None]:
        key = (values.numel(), values.dtype)  # pragma: no mutate (CUDA only)
        host = self._pinned.get(key)  # pragma: no mutate (CUDA only)
        if host is None:  # pragma: no mutate (CUDA only)
            host = self._pinned[key] = torch.empty(  # pragma: no mutate (CUDA only)
                key[0],  # pragma: no mutate (CUDA only)
                dtype=values.dtype,  # pragma: no mutate (CUDA only)
                pin_memory=True,  # pragma: no mutate (CUDA only)
            )
        host = host.view(values.shape)  # pragma: no mutate (CUDA only)
        host.copy_(values, non_blocking=True)  # pragma: no mutate (CUDA only)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # pragma: no mutate (CUDA only)
        event.record()
        return host, event


def host_copy_for(device: torch.device) -> HostCopy:
    """How results computed on ``device`` reach the host (the seam tests replace)."""
    return CopyAsync() if device.type == "cuda" else CopyNow()


def device_counts(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite and Inf element counts of real tensors (one device, one dtype), as float64
    vectors there; the NaN count is what is left of ``numel``.

    Nine fused kernels whatever the number of tensors, and no host sync. ``x * 0`` is 0 for a
    finite x and NaN otherwise; its reciprocal is +-inf or NaN, whose sign is +-1 or 0 (torch's
    sign maps NaN to 0): summing ``|sign(1 / (x * 0))|`` counts the finite elements.
    ``clamp(x, -max, max) - x`` is 0 for a finite x, +-inf for an infinite one and NaN for a
    NaN: summing the ``|sign|`` of that counts the infinite ones. Temporaries are bounded by
    working through the tensors in chunks.
    """
    big = torch.finfo(tensors[0].dtype).max
    finite: list[torch.Tensor] = []
    infinite: list[torch.Tensor] = []
    for chunk in _chunks(tensors):
        work = torch._foreach_mul(chunk, 0.0)  # pragma: no mutate
        # (x * 1 would do too: no finite x has a reciprocal that rounds to 0; x * 0 is clearer)
        torch._foreach_reciprocal_(work)
        torch._foreach_sign_(work)
        finite.append(torch.stack(torch._foreach_norm(work, 1, dtype=torch.float64)))
        work = torch._foreach_clamp_min(chunk, -big)
        torch._foreach_clamp_max_(work, big)
        torch._foreach_sub_(work, chunk)
        torch._foreach_sign_(work)
        infinite.append(torch.stack(torch._foreach_norm(work, 1, dtype=torch.float64)))
    return torch.cat(finite), torch.cat(infinite)


def _chunks(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    chunks: list[list[torch.Tensor]] = [[]]
    size = 0
    for tensor in tensors:
        if chunks[-1] and size + tensor.numel() > _CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(tensor)
        size += tensor.numel()
    return chunks


def _deferred_stats(views: list[torch.Tensor], sources: list[torch.Tensor]) -> torch.Tensor:
    """(3, n) float64 on the device: norms, finite counts, Inf counts; nothing read back."""
    if sources[0].dtype == torch.float64:
        norms = robust_norms64(sources)
    else:  # float64 accumulation cannot over- or underflow for float32 and narrower values
        fused = torch._foreach_norm(sources, 2, dtype=torch.float64)  # pragma: no mutate
        # (2 is torch's default order too: the mutant without it is the same call)
        norms = torch.stack(fused)
    if any(v.is_complex() for v in views):  # rare: count per complex element, tensor by tensor
        finite = torch.stack([torch.isfinite(v).sum() for v in views]).double()
        inf = torch.stack([(torch.isinf(v) & ~torch.isnan(v)).sum() for v in views]).double()
    else:
        finite, inf = device_counts(sources)
    return torch.stack([norms, finite, inf])


class Reading:
    """Norms and NaN/Inf counts of one pass's gradients (raw, before any loss-scale division).

    ``copy_for(device)`` chooses how each device's results reach the host. ``known`` may hold
    norms already taken on the CPU (0-d float32/float64 tensors) for some tensors.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        known: Sequence[torch.Tensor | None] | None = None,
        *,
        copy_for: Callable[[torch.device], HostCopy] = host_copy_for,
    ) -> None:
        n = len(tensors)
        self._marks: dict[int, float] = {}  # finite-part norms of gradients with NaN/Inf
        self._deferred: set[int] = set()
        self._bad = False  # whether any tensor holds a NaN or an Inf
        self._pending: list[tuple[list[int], torch.Tensor, Event | None]] = []
        detach = _plain(tensors)
        if detach is not None and not copy_for(tensors[0].device).deferred:
            # The common case, kept short (it runs once per backward pass): one device, one
            # dtype, dense real tensors, read now.
            self._numel: list[int] | None = None  # each tensor's own
            group = [t.detach() for t in tensors] if detach else list(tensors)  # pragma: no mutate
            # (a norm is the same detached or not: detaching spares autograd its bookkeeping)
            red = reduction_dtype(tensors[0].dtype)
            if known is None:
                taken = _norms(group, red)
            else:  # those taken already are in the reduction dtype too
                pairs = zip(group, known, strict=True)  # pragma: no mutate (one norm each)
                unmeasured = [t for t, norm in pairs if norm is None]
                fresh = iter(_norms(unmeasured, red))
                taken = [norm if norm is not None else next(fresh) for norm in known]
            values: list[float] = torch.stack(taken).tolist()
            self._stats: list[Stats] = list(zip(values, repeat(0), repeat(0)))
            # norms are >= 0 or NaN, so their sum is finite exactly when none is NaN or Inf
            safe = min(values) > _SAFE_LOW and max(values) < _SAFE_HIGH  # pragma: no mutate
            # (at a bound, the norm redone in float64 is the same norm)
            if not (math.isfinite(sum(values)) and safe):
                odd = [i for i, v in enumerate(values) if _unsafe(v)]
                self._read_now(odd, [group[i] for i in odd], [values[i] for i in odd])
            return
        self._stats = [(0.0, 0, 0)] * n
        views = [stat_view(t) for t in tensors]
        sources = [norm_source(v) for v in views]
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        self._numel = [v.numel() for v in views]
        for i, source in enumerate(sources):
            if source.numel():
                groups.setdefault((source.device, source.dtype), []).append(i)
        for (device, dtype), indices in groups.items():
            copy = copy_for(device)
            group = [sources[i] for i in indices]
            if copy.deferred:
                self._deferred.update(indices)
                stacked = _deferred_stats([views[i] for i in indices], group)
                host, event = copy(stacked)
                self._pending.append((indices, host, event))
                continue
            red = reduction_dtype(dtype)
            norms: list[torch.Tensor | None] = list(known) if known else [None] * n
            missing = [i for i in indices if norms[i] is None]
            measured = _norms([sources[i] for i in missing], red)
            for i, norm in zip(missing, measured, strict=True):  # pragma: no mutate (one each)
                norms[i] = norm
            # norms taken in the hooks are in the reduction dtype; stack would promote any other
            values = torch.stack([norms[i] for i in indices]).tolist()  # type: ignore[misc]
            self._read_now(indices, [views[i] for i in indices], values)

    def _read_now(self, indices: list[int], views: list[torch.Tensor], norms: list[float]) -> None:
        for i, view, norm in zip(indices, views, norms, strict=True):  # pragma: no mutate
            # (the three lists have one entry per index by construction: strict never fires)
            if not _unsafe(norm):
                self._stats[i] = (norm, 0, 0)
                continue
            norm = exact_norm(view)  # squares may have under- or overflowed
            nan, inf = (
                # (a shortcut: a finite norm's NaN/Inf counts are (0, 0) when counted too)
                count_nonfinite(view) if not math.isfinite(norm) else (0, 0)  # pragma: no mutate
            )
            if nan or inf:
                self._marks[i] = finite_part_norm(view)
                self._bad = True
            self._stats[i] = (norm, nan, inf)

    @property
    def pending(self) -> bool:
        """True while results are still on their way to the host."""
        return bool(self._pending)

    def wait(self) -> None:
        """Read every result still in flight (waits for its copy the first time)."""
        for indices, host, event in self._pending:
            if event is not None:
                event.synchronize()
            norms, finite, infs = host.tolist()
            numel = self._numel
            assert numel is not None
            for k, i in enumerate(indices):
                inf = round(infs[k])
                nan = numel[i] - round(finite[k]) - inf
                self._stats[i] = (norms[k], nan, inf)
                if nan or inf:
                    self._bad = True
        self._pending = []

    def get(self, i: int) -> Stats:
        """(norm, NaN count, Inf count) of tensor ``i``."""
        if self._pending:
            self.wait()
        return self._stats[i]

    def any_nonfinite(self) -> bool:
        """Whether any tensor holds a NaN or an Inf (one call instead of one ``get`` each)."""
        if self._pending:
            self.wait()
        return self._bad

    def numel(self, i: int) -> int | None:
        """How many elements the statistics of tensor ``i`` are over (stored values if sparse);
        None when that is the tensor's own ``numel()``."""
        return None if self._numel is None else self._numel[i]

    def unchanged(self, i: int, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` still holds what tensor ``i`` held when its statistics were taken.

        The norm is recomputed the same way and compared (to the last bit on the CPU, where the
        kernel is deterministic; to 1e-12 where a fused device kernel may sum in another order):
        any rescaling shows, whether or not it bumped the version counter, as
        ``GradScaler.unscale_`` does not. For a gradient holding NaN/Inf the norm cannot change,
        so the norm of its finite elements is compared instead (on the CPU, where it was taken
        when the pass ended; a deferred read could not, and trusts the version counter).
        """
        norm, nan, inf = self.get(i)
        view = stat_view(tensor)
        if view.numel() != (tensor.numel() if self._numel is None else self._numel[i]):
            return False
        if nan or inf:
            mark = self._marks.get(i)
            return mark is None or finite_part_norm(view) == mark
        if view.numel() == 0:
            return True
        source = norm_source(view)
        if i in self._deferred:
            if source.dtype == torch.float64:
                now = float(robust_norms64([source])[0])
            else:
                (n64,) = torch._foreach_norm([source], 2, dtype=torch.float64)  # pragma: no mutate
                # (2 is torch's default order too: the mutant without it is the same call)
                now = float(n64)
            return math.isclose(now, norm, rel_tol=1e-12)
        red = reduction_dtype(source.dtype)
        now = float(torch._foreach_norm([source], 2, dtype=red)[0])  # pragma: no mutate
        # (2 is torch's default order; dtype= is checked by the bfloat16 test)
        if _unsafe(now):
            now = exact_norm(view)
        return now == norm


def _norms(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """Each tensor's 2-norm, accumulated in ``dtype``, in one fused call (none for none: torch's
    fused norm refuses an empty list, and every gradient may have been measured in a hook)."""
    if not tensors:
        return []
    return list(torch._foreach_norm(tensors, 2, dtype=dtype))  # pragma: no mutate
    # (2 is torch's default order too: the mutant without it is the same call)


def _unsafe(norm: float) -> bool:
    """Whether a norm may have under- or overflowed in its squares, or is NaN or Inf."""
    return not _SAFE_LOW < norm < _SAFE_HIGH  # pragma: no mutate (at a bound: the same norm)


def _plain(tensors: Sequence[torch.Tensor]) -> bool | None:
    """For one device, one dtype, dense, real and non-empty tensors, whether any needs detaching;
    None when the fast path does not apply. (Checked with map(), in C: it runs every pass.)"""
    if not tensors or tensors[0].is_complex():
        return None
    first, n = tensors[0], len(tensors)
    if (
        list(map(_dtype, tensors)).count(first.dtype) != n
        or list(map(_get_device, tensors)).count(first.get_device()) != n
        or list(map(_layout, tensors)).count(torch.strided) != n
        or not all(map(_numel, tensors))
    ):
        return None
    return any(map(_requires_grad, tensors))
