"""``GradscopeCallback`` for PyTorch Lightning: watch the model through ``Trainer.fit``.

>>> from gradscope.integrations.lightning import GradscopeCallback
>>> callback = GradscopeCallback(every=1, log_every_n_steps=10)
>>> # trainer = lightning.pytorch.Trainer(callbacks=[callback]); trainer.fit(model)
>>> # callback.watch.last.summary() ... and report.html in trainer.log_dir

The class derives from ``lightning.pytorch.Callback`` and, when installed too, from the older
``pytorch_lightning.Callback``, so either package's ``Trainer`` accepts it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING, Any

from torch.nn.parallel import DistributedDataParallel

from .._errors import GradscopeError
from .._watch.watch import Keep, Watch
from ._common import INSTALL_HINT, CallbackState, MissingFramework, figures, watch_options
from .tensorboard import log_record

__all__ = ["GradscopeCallback"]


def _callback_bases() -> tuple[type, ...]:
    bases = []
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            bases.append(importlib.import_module(name).Callback)
        except ImportError:
            continue
    if not bases:
        raise MissingFramework(
            "gradscope.integrations.lightning needs lightning (or pytorch_lightning), which is "
            f"not installed: {INSTALL_HINT}"
        )
    return tuple(bases)


if TYPE_CHECKING:
    from lightning.pytorch import Callback as _Base
    from lightning.pytorch import LightningModule, Trainer
else:
    _Base = type("_LightningCallback", _callback_bases(), {})


def _tensorboard_writer(logger: Any) -> Any:
    """The SummaryWriter behind a (lightning or pytorch_lightning) TensorBoardLogger, or None."""
    if any(cls.__name__ == "TensorBoardLogger" for cls in type(logger).__mro__):
        return logger.experiment
    return None


class GradscopeCallback(_Base):
    """Watch ``pl_module`` from ``on_fit_start`` to ``on_fit_end``.

    Takes :func:`gradscope.watch`'s options (``include``, ``exclude``, ``keep``, ``every``,
    ``history``, ``copy``, ``tag_modules``); the trainer's optimizers go to the watch where it
    accepts them, and its precision plugin's GradScaler (16-mixed) unscales the statistics.
    Every ``log_every_n_steps`` optimizer steps (default: the trainer's) the newest record goes
    to each of the trainer's loggers, at the step Lightning logs that step's loss under:
    ``gradscope/grad_norm/<param>`` (``.grad``'s norm when backward ended: with
    ``accumulate_grad_batches`` the accumulated gradient, and before ``gradient_clip_val``
    clipped it) and ``gradscope/nonfinite/<param>`` (NaN plus Inf elements). A TensorBoard
    logger gets them through :func:`gradscope.integrations.tensorboard.log_record`, with
    histograms ``gradscope/grad/<param>`` when ``histograms=True``; other loggers through
    ``log_metrics``. When fit ends (or fails), process 0 writes ``report`` (a file name,
    ``None`` for none) into ``trainer.log_dir``; ``callback.watch`` keeps the records (under DDP
    each process its own).
    """

    def __init__(
        self,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        keep: Keep = "last",
        every: int = 1,
        history: int | None = 1000,
        copy: bool = False,
        tag_modules: bool = True,
        log_every_n_steps: int | None = None,
        histograms: bool = False,
        report: str | None = "report.html",
    ) -> None:
        super().__init__()
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 0
        ):
            raise GradscopeError(
                f"log_every_n_steps={log_every_n_steps!r}: pass an int >= 0 (0 logs nothing), "
                "or None to follow Trainer(log_every_n_steps=...)"
            )
        options = watch_options(
            include=include,
            exclude=exclude,
            keep=keep,
            every=every,
            history=history,
            copy=copy,
            tag_modules=tag_modules,
        )
        self._state = CallbackState(options, report)
        self.log_every_n_steps = log_every_n_steps
        self.histograms = bool(histograms)
        self._log_dir: str | None = None

    # ----------------------------------------------------------------------------- public
    @property
    def watch(self) -> Watch:
        """The watch of the current (or last) fit; raises before ``fit`` started."""
        if self._state.watch is None:
            raise GradscopeError(
                "callback.watch exists once Trainer.fit() started with this callback"
            )
        return self._state.watch

    @property
    def optimizers(self) -> list[Any]:
        """The optimizers the trainer configured for the current (or last) fit, while alive
        (the callback holds them weakly)."""
        return self._state.optimizers

    @property
    def report_path(self) -> Path | None:
        """Where the report was written at the end of fit (None before, or on other ranks)."""
        return self._state.report_path

    # ----------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # trainer.log_dir broadcasts under DDP, so every process asks here, together, rather
        # than process 0 alone at the end (which would hang).
        self._log_dir = trainer.log_dir
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        # Under strategy="ddp" the trainer runs a DistributedDataParallel wrapper by now: watch
        # that, so records know ``after`` is the average and ``local`` this process's own.
        model = trainer.model
        if not isinstance(model, DistributedDataParallel) or model.module is not pl_module:
            model = pl_module
        self._state.start(model, trainer.optimizers, scaler)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        # Called after backward (and the whole accumulation window), before clipping and step.
        every = self.log_every_n_steps
        if every is None:  # the trainer's setting (set in its __init__, not in its type stubs)
            every = int(getattr(trainer, "log_every_n_steps", 50))
        if not every or (trainer.global_step + 1) % every or not trainer.loggers:
            return
        record = self._state.new_record()
        if record is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        metrics: dict[str, float] | None = None
        for logger in trainer.loggers:
            writer = _tensorboard_writer(logger)
            if writer is not None:
                log_record(record, writer, step, histograms=self.histograms)
            else:
                metrics = metrics if metrics is not None else figures(record)
                logger.log_metrics(metrics, step=step)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # The report is most useful exactly when training blew up (a NaN loss, say).
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        self._state.finish(self._log_dir or trainer.default_root_dir, trainer.is_global_zero)
        # Lightning sets callback.log = pl_module.log (a bound method) on every callback at
        # setup, and sets it again for the next fit: a callback kept to read its records after
        # fit would keep the model, and through it the trainer, alive.
        for name in ("log", "log_dict"):
            if isinstance(self.__dict__.get(name), MethodType):
                del self.__dict__[name]
