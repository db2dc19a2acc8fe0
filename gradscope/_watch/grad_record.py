"""One parameter's record of one backward pass (:class:`GradRecord`): its tensors, the statistics
read when the pass ended, and the checks that say whether ``.grad`` still holds them.

Only this module reads or writes a record's private state; the watch changes it through the
named methods (``from_pass``, ``attach_reading``, ``swap_for_copy``, ``set_across_ranks``,
``drop_if_orphaned``, ``drop_tensors``) and the functions below, which
:class:`~.records.BackwardRecord` answers from.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from operator import attrgetter

import torch

from .._errors import GradscopeError
from .reading import Reading
from .stats import GradStats, full_stats

__all__ = ["GradRecord", "any_nonfinite_of", "attach_reading", "held_befores_of"]


class GradRecord:
    """One parameter in one backward pass.

    ``before`` is ``p.grad`` just before the pass accumulated into it, ``after`` is ``p.grad`` when
    the pass finished and ``delta`` is what the pass added (``after == before + delta``), after
    every tensor hook on the parameter, whatever their order. Under ``torch.autograd.grad``
    nothing is accumulated (``accumulated`` is False): ``delta`` holds the gradient autograd
    computed and ``before``/``after`` the untouched ``.grad``. Under DistributedDataParallel
    ``after`` is the averaged gradient the optimizer will use, ``local`` the gradient this
    process computed and ``delta`` is ``after - before``. Under FSDP2 (``fully_shard``)
    ``before``, ``after`` and ``delta`` are this rank's shards as plain tensors (the DTensor
    gradient's local tensor), ``stats`` describe the whole gradient (combined across ranks when
    the pass ended), ``local_stats`` this rank's shard and ``rank_stats`` every rank's. A sparse
    gradient gives sparse tensors.

    Tensors are None once dropped (see ``watch(keep=..., max_bytes=...)`` and
    ``BackwardRecord.dropped``). Without ``watch(copy=True)`` the watch keeps the very tensor
    ``.grad`` held at the end of the pass instead of a copy; reading ``after`` then returns a
    copy, and raises if ``.grad`` was changed in place since (``clip_grad_norm_``,
    ``GradScaler.unscale_``, ``zero_grad(set_to_none=False)``, ``p.grad.data.mul_``...), because
    that value is gone. The change is found from the version counter, the scaler's state and the
    gradient's norm (recomputed and compared), so rescaling that does not bump the version
    counter (``GradScaler.unscale_``, ``p.grad.data.mul_``) is caught too.
    """

    __slots__ = (
        "_after",
        "_before",
        "_delta",
        "_full",
        "_handed_out",
        "_intact",
        "_local",
        "_ranks",
        "_reading",
        "_rescaled",
        "_slot",
        "_source_version",
        "_whole",
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
        # Set when the statistics' source (``after``, or ``delta`` under autograd.grad) is a
        # tensor the training loop also holds (.grad, autograd.grad's result): its version then.
        self._source_version: int | None = None
        # None: check the source on every read; True: an unshared copy, checked; False: changed.
        self._intact: bool | None = None
        # Whether code that rescales .grad without bumping its version ran since the pass
        # (GradScaler.unscale_), when the watch knows the scaler.
        self._rescaled: Callable[[], bool] | None = None
        self._handed_out = False  # a tensor handed to the user is never reused as a buffer
        self._reading: Reading | None = None  # the pass's norms and NaN/Inf counts
        self._slot = 0
        self._full: GradStats | None = None
        # FSDP2: the whole gradient's statistics and every rank's (see gradscope._distributed).
        self._whole: GradStats | None = None
        self._ranks: list[GradStats] | None = None

    @classmethod
    def from_pass(
        cls,
        name: str,
        index: int,
        shape: torch.Size,
        slot: int,
        *,
        accumulated: bool = True,
        loss_scale: float | None = None,
        aliases: tuple[str, ...] = (),
        before: torch.Tensor | None = None,
        after: torch.Tensor | None = None,
        delta: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
        source_version: int | None = None,
    ) -> GradRecord:
        """The record the watch builds when a pass ends (user code reads records, never builds).

        ``slot`` is the record's place in the pass's ``Reading``, given later with
        ``attach_reading``; ``source_version`` the version of ``after`` (of ``delta`` under
        ``torch.autograd.grad``) when that tensor is one the training loop also holds.
        Sets every slot itself, without ``__init__``: it runs once per parameter per pass.
        """
        record = cls.__new__(cls)
        record.name = name
        record.index = index
        record.shape = shape
        record.accumulated = accumulated
        record.loss_scale = loss_scale
        record.aliases = aliases
        record._before = before
        record._after = after
        record._delta = delta
        record._local = local
        record._source_version = source_version
        record._intact = None
        record._rescaled = None
        record._handed_out = False
        record._reading = None
        record._slot = slot
        record._full = None
        record._whole = None
        record._ranks = None
        return record

    def _source(self) -> torch.Tensor | None:
        return self._after if self.accumulated else self._delta

    def _check(self) -> bool:
        """Whether the statistics' source still holds what it held when the pass ended."""
        if self._intact is not None:
            return self._intact
        source = self._source()
        if source is None:
            return True
        shared = self._source_version is not None
        ok = (
            (not shared or source._version == self._source_version)
            and not (self._rescaled is not None and self._rescaled())
            and (self._reading is None or self._reading.unchanged(self._slot, source))
        )
        if not ok or not shared:  # a copy of our own cannot change once checked
            self._intact = ok
        return ok

    @property
    def modified(self) -> bool:
        """True when ``.grad`` was changed in place after the pass, so ``after`` is lost."""
        return self._source() is not None and not self._check()

    def _shared(self, tensor: torch.Tensor | None, what: str) -> torch.Tensor | None:
        if tensor is None:
            return None
        if tensor is not self._source():
            self._handed_out = True
            return tensor
        if not self._check():
            raise GradscopeError(
                f"{self.name}.grad was changed in place after backward pass {self.index} ended "
                f"(by clip_grad_norm_, GradScaler.unscale_, zero_grad(set_to_none=False)?), so "
                f"its {what} value from that pass is gone; the norm and NaN/Inf counts recorded "
                f"then still hold. Use gradscope.watch(model, copy=True) to keep exact copies."
            )
        if self._source_version is None:
            self._handed_out = True
            return tensor
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
        unmodified), and stay None otherwise. The norm is always the recorded one. Under FSDP2
        they describe the whole (unsharded) gradient, combined across ranks when the pass
        ended (numel, norm, NaN/Inf counts only); ``local_stats`` describes this rank's shard.
        """
        if self._whole is not None:
            return self.recorded
        return self.local_stats

    @property
    def local_stats(self) -> GradStats:
        """Statistics of this rank's tensor: under FSDP2 its shard, otherwise as ``stats``."""
        if self._full is None:
            source = self._source()
            if source is not None and self._check():
                stats = full_stats(source, self.recorded_raw())
                if self.loss_scale is not None:
                    stats = stats.scaled(1.0 / self.loss_scale)
                self._full = stats
        if self._full is not None:
            return self._full
        return self._local_recorded()

    @property
    def rank_stats(self) -> list[GradStats] | None:
        """Under FSDP2: every rank's shard statistics (numel, norm, NaN/Inf), by rank."""
        if self._ranks is None:
            return None
        scale = 1.0 if self.loss_scale is None else 1.0 / self.loss_scale
        return [stats.scaled(scale) for stats in self._ranks]

    def recorded_raw(self) -> tuple[float, int, int]:
        """Norm, NaN and Inf counts of this rank's tensor as read when the pass ended, before
        unscaling (what ``local_stats`` and ``recorded`` are made from)."""
        if self._reading is None:
            raise GradscopeError(f"no statistics were recorded for {self.name!r}")
        return self._reading.get(self._slot)

    @property
    def recorded(self) -> GradStats:
        """The statistics taken when the pass ended: numel, norm, NaN and Inf counts."""
        if self._whole is not None:
            whole = self._whole
            return whole if self.loss_scale is None else whole.scaled(1.0 / self.loss_scale)
        return self._local_recorded()

    def _local_recorded(self) -> GradStats:
        norm, nan, inf = self.recorded_raw()
        assert self._reading is not None
        numel = self._reading.numel(self._slot)
        numel = self.shape.numel() if numel is None else numel
        stats = GradStats(numel=numel, norm=norm, nan=nan, inf=inf)
        return stats if self.loss_scale is None else stats.scaled(1.0 / self.loss_scale)

    def swap_for_copy(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """Swap a live ``.grad`` reference for a copy of it (the watch calls this before the
        next backward adds into it; user code never needs to).

        Does nothing unless ``after`` is ``old`` as it was when the pass ended; when ``old``
        was changed in place since, marks the record ``modified`` instead.
        """
        if self._after is not old or self._source_version is None:
            return  # not ours
        if old._version != self._source_version or (
            self._rescaled is not None and self._rescaled()
        ):
            self._intact = False  # already changed in place: ``modified`` says so
            return
        self._after, self._source_version, self._rescaled = new, None, None
        if self._delta is old:
            self._delta = new

    def set_across_ranks(self, whole: GradStats, ranks: list[GradStats]) -> None:
        """FSDP2, when the pass ends: the whole gradient's statistics and every rank's shard's
        (numel, norm, NaN/Inf, before unscaling), which ``stats`` and ``rank_stats`` read. The
        watch calls this; user code never needs to."""
        self._whole = whole
        self._ranks = ranks

    def drop_if_orphaned(self, live: torch.Tensor | None) -> bool:
        """Let go of the tensors when ``after`` was the pass's ``.grad`` and the parameter's
        ``.grad`` is now ``live``, another tensor (the watch would be the only holder); the
        statistics stay. Returns whether the record still holds its ``after``. The watch calls
        this before each forward pass; user code never needs to.
        """
        after = self._after
        if after is None:
            return False
        if self._source_version is not None and live is not after:  # an orphan
            self._before = self._after = self._delta = self._local = None
            return False
        return True

    def local_norm(self) -> tuple[float, int] | None:
        """Under DDP, while the record holds ``local``: its norm and NaN/Inf count (None once
        dropped, or without DDP). Reads the tensor without handing it out."""
        local = self._local
        if local is None:
            return None
        finite = local.isfinite()
        return float(local.double().norm()), int((~finite).sum())

    def drop_tensors(self) -> list[torch.Tensor]:
        """Forget the tensors, keeping the statistics; return the ones that are free to reuse.

        Each tensor is returned once, even where ``after`` and ``delta`` are the same one.
        """
        if self._handed_out or self._source_version is not None:  # none of them is ours
            self._before = self._after = self._delta = self._local = None
            return []
        unique: dict[int, torch.Tensor] = {}
        for tensor in (self._before, self._after, self._delta, self._local):
            if tensor is not None:
                unique.setdefault(id(tensor), tensor)
        self._before = self._after = self._delta = self._local = None
        return list(unique.values())

    def nbytes(self) -> int:
        """Bytes of the tensors this record holds (each counted once)."""
        unique = {
            id(t): t for t in (self._before, self._after, self._delta, self._local) if t is not None
        }
        return sum(_nbytes(t) for t in unique.values())

    def __repr__(self) -> str:
        stats = self.stats
        kind = "" if self.accumulated else ", autograd.grad"
        return (
            f"GradRecord({self.name!r}, pass {self.index}, shape={tuple(self.shape)}, "
            f"norm={stats.norm:.4g}, nan={stats.nan}, inf={stats.inf}{kind})"
        )


def attach_reading(
    records: Collection[GradRecord], reading: Reading, rescaled: Callable[[], bool] | None
) -> None:
    """Give one pass's records their statistics and, with a GradScaler, the check that says
    whether it rescaled ``.grad`` in place since (only records whose ``after`` is ``.grad``)."""
    for record in records:
        record._reading = reading
    if rescaled is not None:
        for record in records:
            if record.accumulated and record._source_version is not None:
                record._rescaled = rescaled


def _nbytes(tensor: torch.Tensor) -> int:
    if tensor.layout == torch.sparse_coo:
        return _nbytes(tensor._values()) + _nbytes(tensor._indices())
    return tensor.numel() * tensor.element_size()


_before_of, _reading_of = attrgetter("_before"), attrgetter("_reading")
_whole_of = attrgetter("_whole")
_NOTHING = frozenset({None})


def held_befores_of(grads: Mapping[str, GradRecord]) -> dict[str, torch.Tensor]:
    """:meth:`BackwardRecord.held_befores` over one pass's records."""
    if set(map(_before_of, grads.values())) <= _NOTHING:  # in C: the usual case, none
        return {}
    held: dict[str, torch.Tensor] = {}
    for name, grad in grads.items():
        before = grad._before
        if before is not None and grad.accumulated:
            held[name] = before
    return held


def any_nonfinite_of(grads: Mapping[str, GradRecord]) -> bool:
    """:meth:`BackwardRecord.any_nonfinite` over one pass's records: the records of a pass
    share one reading, which answers in one call; records that do not (or FSDP2's
    whole-gradient statistics) are asked one by one."""
    readings: set[Reading | None] = set(map(_reading_of, grads.values()))
    if len(readings) == 1 and list(map(_whole_of, grads.values())).count(None) == len(grads):
        (reading,) = readings
        if reading is not None:
            return reading.any_nonfinite()
    return any(not g.recorded.finite for g in grads.values())
