"""What one backward pass did to each parameter's ``.grad``: plain data, no hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .._errors import GradscopeError, UnknownParameterError
from .stats import GradStats, full_stats

__all__ = ["BackwardRecord", "GradRecord"]


class GradRecord:
    """One parameter in one backward pass.

    ``before`` is ``p.grad`` just before the pass accumulated into it, ``after`` is ``p.grad`` when
    the pass finished and ``delta`` is what the pass added (``after == before + delta``). Under
    ``torch.autograd.grad`` nothing is accumulated (``accumulated`` is False): ``delta`` holds the
    gradient autograd computed and ``before``/``after`` the untouched ``.grad``. Under
    DistributedDataParallel ``after`` is the averaged gradient the optimizer will use, ``local``
    the gradient this process computed and ``delta`` is ``after - before``.

    Tensors are None once dropped (see ``watch(keep=...)``). Without ``watch(copy=True)`` the
    watch keeps the very tensor ``.grad`` held at the end of the pass instead of a copy; reading
    ``after`` then returns a copy, and raises if code changed ``.grad`` in place since (for
    example ``clip_grad_norm_`` or ``GradScaler.unscale_``), because that value is gone.
    """

    __slots__ = (
        "_after",
        "_after_version",
        "_before",
        "_cheap",
        "_delta",
        "_full",
        "_handed_out",
        "_local",
        "_norm",
        "_resolve",
        "accumulated",
        "aliases",
        "index",
        "loss_scale",
        "name",
        "shape",
    )

    def __init__(
        self,
        name: str,
        index: int,
        shape: torch.Size,
        *,
        accumulated: bool = True,
        loss_scale: float | None = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.index = index
        self.shape = shape
        self.accumulated = accumulated
        self.loss_scale = loss_scale
        self.aliases = aliases
        self._before: torch.Tensor | None = None
        self._after: torch.Tensor | None = None
        self._delta: torch.Tensor | None = None
        self._local: torch.Tensor | None = None
        # Set when _after is the live .grad tensor rather than a copy: its version then.
        self._after_version: int | None = None
        self._handed_out = False  # a tensor handed to the user is never reused as a buffer
        self._cheap: GradStats | None = None
        self._norm: float | None = None  # a finite norm: ``_cheap`` is built from it on demand
        # Reads back the pass's norms when they are still on their way from the device.
        self._resolve: Callable[[], None] | None = None
        self._full: GradStats | None = None

    @property
    def modified(self) -> bool:
        """True when ``.grad`` was changed in place after the pass, so ``after`` is lost."""
        return (
            self._after is not None
            and self._after_version is not None
            and self._after._version != self._after_version
        )

    def _shared(self, tensor: torch.Tensor | None, what: str) -> torch.Tensor | None:
        if tensor is None or tensor is not self._after or self._after_version is None:
            self._handed_out = True
            return tensor
        if self.modified:
            raise GradscopeError(
                f"{self.name}.grad was changed in place after backward pass {self.index} ended "
                f"(by clip_grad_norm_, GradScaler.unscale_, zero_grad(set_to_none=False)?), so "
                f"its {what} value from that pass is gone; the norm and NaN/Inf counts recorded "
                f"then still hold. Use gradscope.watch(model, copy=True) to keep exact copies."
            )
        return tensor.clone()

    @property
    def before(self) -> torch.Tensor | None:
        """``.grad`` as it was when this pass started (None: there was none)."""
        return self._shared(self._before, "before")

    @property
    def after(self) -> torch.Tensor | None:
        """``.grad`` when this pass ended: ``before`` plus what the pass added."""
        return self._shared(self._after, "after")

    @property
    def delta(self) -> torch.Tensor | None:
        """What this pass added to ``.grad`` (``after - before``)."""
        return self._shared(self._delta, "delta")

    @property
    def local(self) -> torch.Tensor | None:
        """Under DDP: the gradient this process computed, before averaging."""
        return self._shared(self._local, "local")

    @property
    def stats(self) -> GradStats:
        """Statistics of ``after`` (of ``delta`` for ``torch.autograd.grad``), unscaled.

        numel, norm and the NaN/Inf counts are recorded for every pass; mean, std, min, max,
        abs_max and zero_fraction are computed on first read while the tensors are kept (and
        unmodified), and stay None otherwise.
        """
        if self._full is None and not self.modified:
            source = self._after if self.accumulated else self._delta
            if source is not None:
                stats = full_stats(source)
                if self.loss_scale is not None:
                    stats = stats.scaled(1.0 / self.loss_scale)
                self._full = stats
        if self._full is not None:
            return self._full
        return self.recorded

    @property
    def recorded(self) -> GradStats:
        """The statistics taken when the pass ended: numel, norm, NaN and Inf counts."""
        if self._cheap is None and self._resolve is not None:
            self._resolve()
        if self._cheap is None and self._norm is not None:
            stats = GradStats(numel=self.shape.numel(), norm=self._norm, nan=0, inf=0)
            self._cheap = stats if self.loss_scale is None else stats.scaled(1.0 / self.loss_scale)
        if self._cheap is None:
            raise GradscopeError(f"no statistics were recorded for {self.name!r}")
        return self._cheap

    def _replace(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """Swap a live ``.grad`` reference for a copy of it (before backward adds into it)."""
        if self._after is None or self._after is not old or self._after_version != old._version:
            return  # not ours, or already changed in place: leave ``modified`` to say so
        self._after, self._after_version = new, None
        if self._delta is old:
            self._delta = new

    def drop_tensors(self) -> list[torch.Tensor]:
        """Forget the tensors, keeping the statistics; return the ones that are free to reuse."""
        tensors = [
            t for t in (self._before, self._after, self._delta, self._local) if t is not None
        ]
        reusable = not self._handed_out and self._after_version is None
        self._before = self._after = self._delta = self._local = None
        return tensors if reusable else []

    def __repr__(self) -> str:
        stats = self.stats
        kind = "" if self.accumulated else ", autograd.grad"
        return (
            f"GradRecord({self.name!r}, pass {self.index}, shape={tuple(self.shape)}, "
            f"norm={stats.norm:.4g}, nan={stats.nan}, inf={stats.inf}{kind})"
        )


@dataclass(eq=False)
class BackwardRecord(Mapping[str, GradRecord]):
    """Every watched parameter in one backward pass, by name (tied aliases resolve).

    ``missing`` lists trainable parameters that received no gradient in this pass, ``frozen``
    the ones with ``requires_grad=False``, ``replaced`` names whose ``nn.Parameter`` was swapped
    for a new object since the previous pass (the watch follows the new one), ``shapes`` the
    shape of every watched parameter, with or without a gradient.
    """

    index: int
    grads: dict[str, GradRecord]
    missing: list[str]
    frozen: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    loss_scale: float | None = None
    errors: list[BaseException] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def nonfinite(self) -> list[str]:
        """Names of parameters whose gradient holds a NaN or an Inf after this pass."""
        return [name for name, record in self.grads.items() if not record.stats.finite]

    @property
    def scaler_skipped(self) -> bool | None:
        """With ``watch(scaler=...)``: True when GradScaler will skip the step (NaN/Inf grads)."""
        if self.loss_scale is None:
            return None
        return bool(self.nonfinite)

    def __getitem__(self, name: str) -> GradRecord:
        canonical = self.aliases.get(name, name)
        try:
            return self.grads[canonical]
        except KeyError:
            pass
        if canonical in self.missing:
            raise UnknownParameterError(
                f"{name!r} received no gradient in backward pass {self.index}: it is not "
                f"connected to the loss (unused in forward, or detached); see record.missing"
            )
        if canonical in self.frozen:
            raise UnknownParameterError(
                f"{name!r} has requires_grad=False, so backward pass {self.index} gave it no "
                f"gradient; see record.frozen"
            )
        from .._naming import suggest

        raise UnknownParameterError(
            f"the watch has no parameter named {name!r}{suggest(name, self.aliases or self.grads)}"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.grads)

    def __len__(self) -> int:
        return len(self.grads)

    def drop_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Forget every tensor; return, by name, the ones never handed out to the user."""
        return {name: record.drop_tensors() for name, record in self.grads.items()}

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: this pass's per-parameter table."""
        from .._report.notebook import record_html

        return record_html(self)

    def __repr__(self) -> str:
        return (
            f"BackwardRecord(pass {self.index}: {len(self.grads)} gradients, "
            f"missing={self.missing}, frozen={self.frozen}, nonfinite={self.nonfinite})"
        )


def names_in(records: Sequence[BackwardRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.grads))
    return list(seen)
