"""What the diagnosis reads from a watch: its records and the evidence gathered around them.

Plain data assembled on read by :meth:`gradscope.Watch.diagnose`; the rules that turn it into
findings live in ``gradscope._diagnose``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .forward import ForwardMonitor
from .records import BackwardRecord
from .signals import PassSignals
from .steps import StepMonitor

__all__ = ["Evidence", "module_of", "param_order"]


def module_of(name: str) -> str:
    """The path of the module that owns parameter ``name`` ("" for the model itself)."""
    return name.rpartition(".")[0]


def param_order(names: Sequence[str], modules: Sequence[str]) -> list[str]:
    """``names`` sorted by when their module first ran (input side first), else as given."""
    rank = {path: k for k, path in enumerate(modules)}
    fallback = len(rank)
    position = {name: k for k, name in enumerate(names)}
    return sorted(names, key=lambda n: (rank.get(module_of(n), fallback), position[n]))


@dataclass(frozen=True)
class Evidence:
    """Everything the diagnosis rules look at, for one watch at one moment."""

    model: str
    records: list[BackwardRecord]
    passes_seen: int
    every: int
    keep: str
    shapes: Mapping[str, tuple[int, ...]]  # every watched parameter (canonical names)
    order: list[str]  # the same names, input side first
    module_types: Mapping[str, str]  # module path -> class name
    trainable: Mapping[str, bool]  # requires_grad now (the last record's ``frozen`` once closed)
    weight_norms: Mapping[str, float]  # |p| now, where the model is still alive
    forward: ForwardMonitor | None  # None: forward checks were off (check_forward=False)
    steps: StepMonitor | None  # None: watch() was given no optimizer
    signals: PassSignals
    graph: Any  # the watch's last_graph (a gradscope Graph) or None
    scaler: bool  # watch(scaler=...) was given an enabled GradScaler
    closed: bool
