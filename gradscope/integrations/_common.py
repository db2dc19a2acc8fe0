"""What the callbacks share: their watch options, starting the watch, the logged figures."""

from __future__ import annotations

import importlib
import inspect
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from .._errors import GradscopeError
from .._naming import describe
from .._watch.records import BackwardRecord
from .._watch.watch import Watch, watch

__all__ = [
    "INSTALL_HINT",
    "CallbackState",
    "MissingFramework",
    "figures",
    "import_framework",
    "start_watch",
    "watch_options",
]

INSTALL_HINT = "pip install gradscope[integrations]"


class MissingFramework(GradscopeError, ImportError):
    """An integration's framework is not installed (an ImportError as well)."""


def import_framework(*names: str, needed_by: str) -> ModuleType:
    """The first of ``names`` that imports, or :class:`MissingFramework` saying how to get it."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingFramework(
        f"{needed_by} needs {' or '.join(names)}, which is not installed: {INSTALL_HINT}"
    )


def watch_options(
    *,
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    keep: str,
    every: int,
    history: int | None,
    copy: bool,
    tag_modules: bool,
) -> dict[str, Any]:
    """The callbacks' ``watch()`` options, checked now rather than when ``fit`` starts."""
    for flag, value in (("include", include), ("exclude", exclude)):
        patterns = [value] if isinstance(value, str) else value
        if patterns is not None and not (
            isinstance(patterns, Sequence) and all(isinstance(p, str) for p in patterns)
        ):
            raise GradscopeError(
                f"{flag}={value!r}: pass a glob pattern on parameter names or a list of them"
            )
    options: dict[str, Any] = {
        "keep": keep,
        "every": every,
        "history": history,
        "copy": copy,
        "tag_modules": tag_modules,
    }
    # Watch() owns these checks; run them on a throwaway module so a typo fails at construction.
    watch(nn.Linear(1, 1), **{**options, "tag_modules": False}).close()
    return {"include": include, "exclude": exclude, **options}


def start_watch(
    model: nn.Module, optimizers: Sequence[Any], options: dict[str, Any], scaler: Any = None
) -> Watch:
    """Start the callback's watch on ``model`` with the trainer's optimizers (``optimizer=``:
    one optimizer as itself, several as a tuple), so that ``callback.watch.diagnose()`` can
    check the steps; the report the callbacks write at the end opens with the diagnosis."""
    if not isinstance(model, nn.Module):
        raise GradscopeError(f"the trainer gave the callback {describe(model)}, not an nn.Module")
    extra: dict[str, Any] = {}
    if scaler is not None:
        extra["scaler"] = scaler
    if optimizers and "optimizer" in inspect.signature(watch).parameters:
        extra["optimizer"] = optimizers[0] if len(optimizers) == 1 else tuple(optimizers)
    return watch(model, **options, **extra)


def figures(record: BackwardRecord) -> dict[str, float]:
    """What the callbacks log per parameter: ``gradscope/grad_norm/<name>`` (the L2 norm of
    ``.grad`` when the pass ended, before any clipping) and ``gradscope/nonfinite/<name>`` (NaN
    plus Inf elements). Recorded statistics only: nothing is computed here."""
    out: dict[str, float] = {}
    for name, grad in record.grads.items():
        stats = grad.recorded
        out[f"gradscope/grad_norm/{name}"] = stats.norm
        out[f"gradscope/nonfinite/{name}"] = float(stats.nan + stats.inf)
    return out


class CallbackState:
    """The part both callbacks share: the watch, the optimizers, what was logged, the report."""

    def __init__(self, options: dict[str, Any], report: str | None) -> None:
        if report is not None and (not isinstance(report, str) or not report):
            raise GradscopeError(
                f"report={report!r}: pass a file name such as 'report.html' (written into the "
                "trainer's log directory), or None for no report"
            )
        self.options = options
        self.report_name = report
        self.watch: Watch | None = None
        # Weak: Lightning's optimizers lead back to the trainer and the model, which a callback
        # kept after fit must not keep alive.
        self._optimizers: list[weakref.ref[Any]] = []
        self.report_path: Path | None = None
        self.logged_index = -1

    def start(self, model: nn.Module, optimizers: Sequence[Any], scaler: Any = None) -> Watch:
        if self.watch is not None:
            self.watch.close()
        given = [o for o in optimizers if o is not None]
        self._optimizers = [weakref.ref(o) for o in given]
        self.logged_index = -1
        self.report_path = None
        self.watch = start_watch(model, given, self.options, scaler)
        return self.watch

    @property
    def optimizers(self) -> list[Any]:
        """The trainer's optimizers while they are alive."""
        alive = [ref() for ref in self._optimizers]
        return [o for o in alive if o is not None]

    def new_record(self) -> BackwardRecord | None:
        """The newest record if it was not logged yet (and mark it logged), else None."""
        if self.watch is None:
            return None
        records = self.watch.records
        if not records or records[-1].index == self.logged_index:
            return None
        self.logged_index = records[-1].index
        return records[-1]

    def finish(self, log_dir: str | Path | None, write: bool) -> Path | None:
        """Close the watch; on the writing process, write the report into ``log_dir``."""
        if self.watch is None:
            return None
        self.watch.close()
        if not write or self.report_name is None or log_dir is None or not self.watch.records:
            return None
        target = Path(log_dir) / self.report_name
        target.parent.mkdir(parents=True, exist_ok=True)
        self.report_path = self.watch.report(target)
        return self.report_path
