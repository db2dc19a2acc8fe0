"""What one backward pass did to each parameter's ``.grad``: plain data, no hooks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ._errors import GradscopeError, UnknownParameterError
from ._stats import GradStats, full_stats

__all__ = ["BackwardRecord", "GradRecord"]


@dataclass(eq=False)
class GradRecord:
    """One parameter in one backward pass.

    ``before`` is ``p.grad`` just before the pass accumulated into it, ``after`` is ``p.grad`` when
    the pass finished and ``delta`` is what the pass added (``after == before + delta``). Under
    ``torch.autograd.grad`` nothing is accumulated (``accumulated`` is False): ``delta`` holds the
    gradient autograd computed and ``before``/``after`` the untouched ``.grad``. Under
    DistributedDataParallel ``after`` is the averaged gradient the optimizer will use, ``local``
    the gradient this process computed and ``delta`` is ``after - before``.

    Tensors are detached copies the watch owns (None once dropped, see ``watch(keep=...)``).
    """

    name: str
    index: int
    shape: torch.Size
    before: torch.Tensor | None
    after: torch.Tensor | None
    delta: torch.Tensor | None
    accumulated: bool = True
    local: torch.Tensor | None = None
    loss_scale: float | None = None
    aliases: tuple[str, ...] = ()
    _cheap: GradStats | None = None
    _full: GradStats | None = None

    @property
    def stats(self) -> GradStats:
        """Statistics of ``after`` (of ``delta`` for ``torch.autograd.grad``), unscaled.

        numel, norm and the NaN/Inf counts are recorded for every pass; mean, std, min, max,
        abs_max and zero_fraction are computed on first read while the tensors are kept, and
        stay None for passes whose tensors were dropped.
        """
        if self._full is None:
            source = self.after if self.accumulated else self.delta
            if source is not None:
                stats = full_stats(source)
                if self.loss_scale is not None:
                    stats = stats.scaled(1.0 / self.loss_scale)
                self._full = stats
        if self._full is not None:
            return self._full
        if self._cheap is None:
            raise GradscopeError(f"no statistics were recorded for {self.name!r}")
        return self._cheap

    def drop_tensors(self) -> None:
        """Forget the tensors, keeping the statistics recorded so far."""
        self.before = self.after = self.delta = self.local = None

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
    for a new object since the previous pass (the watch follows the new one).
    """

    index: int
    grads: dict[str, GradRecord]
    missing: list[str]
    frozen: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    replaced: list[str] = field(default_factory=list)
    loss_scale: float | None = None
    errors: list[BaseException] = field(default_factory=list)

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
        from ._naming import suggest

        raise UnknownParameterError(
            f"the watch has no parameter named {name!r}{suggest(name, self.aliases or self.grads)}"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.grads)

    def __len__(self) -> int:
        return len(self.grads)

    def drop_tensors(self) -> None:
        for record in self.grads.values():
            record.drop_tensors()

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
