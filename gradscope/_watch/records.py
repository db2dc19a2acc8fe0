"""What one backward pass did to each parameter's ``.grad``: plain data, no hooks.

A :class:`BackwardRecord` holds one :class:`~.grad_record.GradRecord` per parameter (defined in
``grad_record.py``, re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .._errors import UnknownParameterError
from .._naming import describe, suggest
from .grad_record import GradRecord, any_nonfinite_of, attach_reading, held_befores_of

__all__ = ["BackwardRecord", "GradRecord", "attach_reading"]


@dataclass(eq=False)
class BackwardRecord(Mapping[str, GradRecord]):
    """Every watched parameter in one backward pass, by name (tied aliases resolve).

    ``missing`` lists trainable parameters that received no gradient in this pass, ``frozen``
    the ones with ``requires_grad=False``, ``replaced`` names whose ``nn.Parameter`` was swapped
    for a new object since the previous pass (the watch follows the new one), ``shapes`` the
    shape of every watched parameter, with or without a gradient.

    One ``backward()`` call is one record, also when reentrant activation checkpointing runs
    nested backward passes inside it. ``failed`` is True when the pass raised before it finished
    (an error in a backward function, KeyboardInterrupt, out of memory): ``grads`` then holds
    the gradients that arrived and ``missing`` the ones that did not. ``dropped`` says why the
    tensors were let go, statistics kept: None while they are kept, ``"keep"`` (``keep="last"``
    keeps the newest pass only), ``"max_bytes"`` (``keep="all"`` reached its memory bound).

    ``synchronised`` is None for a model on one process; under DDP and FSDP2 it says whether
    this pass synchronised the gradients across ranks (False inside ``no_sync()`` or after
    ``set_requires_gradient_sync(False)``). FSDP2 keeps an unsynchronised pass's gradients
    unsharded inside FSDP, out of reach: such a record has no gradients (and none missing),
    and the next synchronised pass records the sum of all of them.
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
    failed: bool = False
    dropped: str | None = None
    synchronised: bool | None = None

    @property
    def nonfinite(self) -> list[str]:
        """Names of parameters whose gradient holds a NaN or an Inf after this pass."""
        return [name for name, record in self.grads.items() if not record.stats.finite]

    def any_nonfinite(self) -> bool:
        """Whether the pass left a NaN/Inf gradient, from the counts taken as it ended.

        Cheaper than ``bool(record.nonfinite)``, whose full statistics are a pass over every
        gradient (4x an MLP training step): the records of a pass share one reading, which
        answers in one call; records that do not (or FSDP2's whole-gradient statistics) are
        asked one by one.
        """
        return any_nonfinite_of(self.grads)

    @property
    def scaler_skipped(self) -> bool | None:
        """With ``watch(scaler=...)``: True when GradScaler will skip the step (NaN/Inf grads)."""
        if self.loss_scale is None:
            return None
        return bool(self.nonfinite)

    def __getitem__(self, name: str) -> GradRecord:
        if not isinstance(name, str):
            raise UnknownParameterError(
                f"a backward record is looked up by parameter name (a str), not by "
                f"{describe(name)}; e.g. record[{next(iter(self.grads), 'fc1.weight')!r}], or "
                f"list(record) for the names (watch.records[i] for the i-th pass)"
            )
        canonical = self.aliases.get(name, name)
        try:
            return self.grads[canonical]
        except KeyError:
            pass
        if canonical in self.missing and self.failed:
            raise UnknownParameterError(
                f"{name!r} received no gradient in backward pass {self.index}, which raised "
                f"before it reached this parameter (record.failed); see record.missing"
            )
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
        raise UnknownParameterError(
            f"the watch has no parameter named {name!r}{suggest(name, self.aliases or self.grads)}"
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.grads)

    def __len__(self) -> int:
        return len(self.grads)

    def held_befores(self) -> dict[str, torch.Tensor]:
        """By name, ``before`` of each accumulated gradient whose ``.grad`` held a value as the
        pass started (the watch's own reference: the tensors are not handed out)."""
        return held_befores_of(self.grads)

    def drop_tensors(self) -> dict[str, list[torch.Tensor]]:
        """Forget every tensor; return, by name, the ones never handed out to the user."""
        return {name: record.drop_tensors() for name, record in self.grads.items()}

    def nbytes(self) -> int:
        """Bytes of the tensors this record holds (a tensor shared by two passes counts twice)."""
        return sum(record.nbytes() for record in self.grads.values())

    def _repr_html_(self) -> str:
        """Jupyter/VS Code: this pass's per-parameter table."""
        from .._report.notebook import record_html

        return record_html(self)

    def __repr__(self) -> str:
        failed = ", failed" if self.failed else ""
        return (
            f"BackwardRecord(pass {self.index}{failed}: {len(self.grads)} gradients, "
            f"missing={self.missing}, frozen={self.frozen}, nonfinite={self.nonfinite})"
        )


def names_in(records: Sequence[BackwardRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record.grads))
    return list(seen)
