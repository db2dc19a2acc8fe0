"""``GradscopeCallback`` for the Hugging Face ``transformers.Trainer``.

>>> from gradscope.integrations.transformers import GradscopeCallback
>>> callback = GradscopeCallback()
>>> # Trainer(model, args, train_dataset=..., callbacks=[callback]).train()
>>> # callback.watch.last ... and report.html in args.output_dir
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import GradscopeError
from .._naming import describe
from .._watch.watch import Keep, Watch
from ._common import CallbackState, figures, import_framework, watch_options
from .tensorboard import log_record, summary_writer

__all__ = ["GradscopeCallback"]

if TYPE_CHECKING:
    from transformers import TrainerCallback as _Base
    from transformers import TrainerControl, TrainerState, TrainingArguments
else:
    _Base = import_framework(
        "transformers", needed_by="gradscope.integrations.transformers"
    ).TrainerCallback


def _reports_to_tensorboard(args: TrainingArguments) -> bool:
    targets = args.report_to
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    return "tensorboard" in targets or "all" in targets


class GradscopeCallback(_Base):
    """Watch the model through ``Trainer.train()``.

    Takes :func:`gradscope.watch`'s options (``include``, ``exclude``, ``keep``, ``every``,
    ``history``, ``copy``, ``tag_modules``); the Trainer's optimizer goes to the watch where it
    accepts one. Whenever the Trainer logs (``logging_steps``), ``on_log`` adds the newest
    record's ``gradscope/grad_norm/<param>`` (``.grad``'s norm when backward ended: with
    ``gradient_accumulation_steps`` the accumulated gradient, before ``max_grad_norm`` clipped
    it) and ``gradscope/nonfinite/<param>`` (NaN plus Inf elements) to the logs dict and to
    ``trainer.state.log_history``.

    The Trainer calls its ``report_to`` integrations before the callbacks you pass, so they
    see the logs before this callback added to them. Two ways around that: with
    ``report_to`` including "tensorboard" this callback writes its figures itself, with
    :func:`~gradscope.integrations.tensorboard.log_record`, into ``tensorboard_dir`` (default
    ``<output_dir>/runs/gradscope``, next to the Trainer's own runs; ``histograms=True`` adds
    ``gradscope/grad/<param>``); and ``callback.add_to(trainer)`` puts the callback ahead of
    every integration (wandb, MLflow, ...), which then log the figures like the loss. The
    progress bar prints every logs dict, two entries per parameter: ``into_logs=False`` keeps
    the figures out of it (TensorBoard still gets them from this callback). At the end
    the main process writes ``report`` (a file name, None for none) into ``output_dir``;
    ``callback.watch`` keeps the records.
    """

    def __init__(
        self,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        keep: Keep = "last",
        every: int = 1,
        history: int | None = 1000,
        copy: bool | None = None,
        tag_modules: bool = True,
        histograms: bool = False,
        tensorboard_dir: str | os.PathLike[str] | None = None,
        into_logs: bool = True,
        report: str | None = "report.html",
    ) -> None:
        super().__init__()
        options = watch_options(
            include=include,
            exclude=exclude,
            keep=keep,
            every=every,
            history=history,
            copy=bool(copy),
            tag_modules=tag_modules,
        )
        self._copy_given = copy is not None
        self._state = CallbackState(options, report)
        self.histograms = bool(histograms)
        self.into_logs = bool(into_logs)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self._writer: Any = None
        self._ahead = False

    # ----------------------------------------------------------------------------- public
    @property
    def watch(self) -> Watch:
        """The watch of the current (or last) training run; raises before ``train()``."""
        if self._state.watch is None:
            raise GradscopeError(
                "callback.watch exists once Trainer.train() started with this callback"
            )
        return self._state.watch

    @property
    def optimizers(self) -> list[Any]:
        """The optimizer the Trainer created for the current (or last) run, in a list, while
        alive (the callback holds it weakly)."""
        return self._state.optimizers

    @property
    def report_path(self) -> Path | None:
        """Where the report was written when training ended (None before, or off process 0)."""
        return self._state.report_path

    def add_to(self, trainer: Any) -> GradscopeCallback:
        """Add this callback to ``trainer`` ahead of its ``report_to`` integrations, so that
        every one of them logs the figures ``on_log`` adds (TensorBoard names them
        ``train/gradscope/...`` then). Returns the callback.

        A callback in ``Trainer(callbacks=[...])`` runs after them instead.
        """
        handler = getattr(trainer, "callback_handler", None)
        if handler is None or not isinstance(getattr(handler, "callbacks", None), list):
            raise TypeError(f"add_to() takes a transformers.Trainer, not {describe(trainer)}")
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        self._ahead = True
        return self

    # ----------------------------------------------------------------------------- hooks
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise GradscopeError("the Trainer passed no model to GradscopeCallback.on_train_begin")
        if self.histograms and args.max_grad_norm and not self._copy_given:
            # Clipping rewrites .grad in place before the Trainer logs; histograms need a copy.
            self._state.options["copy"] = True
        self._state.start(model, [optimizer])
        self._close_writer()
        if state.is_world_process_zero and _reports_to_tensorboard(args):
            folder = self.tensorboard_dir or Path(args.output_dir or ".") / "runs" / "gradscope"
            self._writer = summary_writer(folder)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        record = self._state.new_record()
        if record is None:
            return
        if self.into_logs:
            values = figures(record)
            if logs is not None:
                logs.update(values)
            history = state.log_history
            if history and history[-1].get("step") == state.global_step:
                history[-1].update(values)
        if self._writer is not None:
            log_record(
                record,
                self._writer,
                state.global_step,
                histograms=self.histograms,
                # Ahead of the Trainer's TensorBoardCallback, the logs dict already took them.
                scalars=not (self._ahead and self.into_logs),
            )
            self._writer.flush()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._close_writer()
        self._state.finish(args.output_dir or ".", state.is_world_process_zero)

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
