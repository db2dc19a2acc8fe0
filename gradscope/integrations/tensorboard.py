"""Write what a watch recorded to TensorBoard.

``log_watch(w, writer)`` writes the newest record to a ``torch.utils.tensorboard.SummaryWriter``
(or anything with its ``add_scalar``/``add_histogram_raw``): the scalars
``gradscope/grad_norm/<param>`` and ``gradscope/nonfinite/<param>`` and, with
``histograms=True``, ``gradscope/grad/<param>``. Histograms are computed on the gradient's
device and hold the finite values only, so an all-NaN gradient never crashes the writer (as
TensorBoard's own ``add_histogram`` does); its NaN/Inf count is the ``nonfinite`` scalar.

>>> import tempfile, torch, gradscope
>>> from gradscope.integrations.tensorboard import log_watch, summary_writer
>>> net = torch.nn.Linear(3, 1)
>>> with gradscope.watch(net) as w:
...     net(torch.ones(1, 3)).sum().backward()
>>> with summary_writer(tempfile.mkdtemp()) as writer:
...     log_watch(w, writer, histograms=True)
['bias', 'weight']
"""

from __future__ import annotations

import os
from typing import Any

from .._errors import GradscopeError
from .._naming import describe
from .._watch.records import BackwardRecord
from .._watch.watch import Watch
from ._common import figures, import_framework
from ._histogram import histograms as compute_histograms

__all__ = ["log_record", "log_watch", "summary_writer"]


def summary_writer(log_dir: str | os.PathLike[str], **kwargs: Any) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (needs the tensorboard package:
    ``pip install gradscope[integrations]``)."""
    module = import_framework("torch.utils.tensorboard", needed_by="TensorBoard logging")
    return module.SummaryWriter(log_dir=os.fspath(log_dir), **kwargs)


def _check_writer(writer: Any, histograms: bool) -> None:
    needed = ["add_scalar"] + (["add_histogram_raw"] if histograms else [])
    missing = [name for name in needed if not callable(getattr(writer, name, None))]
    if missing:
        raise TypeError(
            f"writer= takes a torch.utils.tensorboard.SummaryWriter, not {describe(writer)} "
            f"(it has no {', '.join(missing)}); make one with summary_writer(log_dir)"
        )


def log_record(
    record: BackwardRecord,
    writer: Any,
    step: int,
    *,
    histograms: bool = False,
    bins: int = 64,
    scalars: bool = True,
) -> list[str]:
    """Write one record at ``step``; return the parameters written (in record order).

    A histogram needs the pass's tensor: parameters whose tensor was dropped
    (``keep="none"``, an older pass) or changed in place after the pass (``clip_grad_norm_``;
    ``watch(copy=True)`` keeps a copy) get their scalars only and are left out of the result
    when ``histograms=True``.
    """
    if not isinstance(record, BackwardRecord):
        raise TypeError(f"log_record() takes a BackwardRecord, not {describe(record)}")
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"step={step!r}: pass an int (the x axis in TensorBoard)")
    _check_writer(writer, histograms)
    if scalars:
        for tag, value in figures(record).items():
            writer.add_scalar(tag, value, step)
    if not histograms:
        return list(record.grads)
    names, tensors = [], []
    for name, grad in record.grads.items():
        if grad.modified:  # changed in place since the pass: its values are gone
            continue
        tensor = grad.after if grad.accumulated else grad.delta
        if tensor is not None:
            names.append(name)
            tensors.append(tensor)
    written = []
    for name, histogram in zip(names, compute_histograms(tensors, bins), strict=True):
        if histogram is None:  # no finite element: the nonfinite scalar says how many
            continue
        writer.add_histogram_raw(
            f"gradscope/grad/{name}",
            min=histogram.min,
            max=histogram.max,
            num=histogram.num,
            sum=histogram.sum,
            sum_squares=histogram.sum_squares,
            bucket_limits=list(histogram.bucket_limits),
            bucket_counts=list(histogram.bucket_counts),
            global_step=step,
        )
        written.append(name)
    return written


def log_watch(
    watch: Watch,
    writer: Any,
    step: int | None = None,
    *,
    histograms: bool = False,
    bins: int = 64,
) -> list[str]:
    """Write ``watch``'s newest record at ``step`` (default: the pass's index); return the
    parameters written. To write every record: ``for r in w.records: log_record(r, writer,
    r.index)``."""
    if not isinstance(watch, Watch):
        raise TypeError(
            f"log_watch() takes a gradscope.Watch, not {describe(watch)}; "
            "for one record use log_record(record, writer, step)"
        )
    try:
        record = watch.last
    except GradscopeError as error:
        raise GradscopeError(f"log_watch(): nothing to log, {error}") from None
    return log_record(
        record, writer, record.index if step is None else step, histograms=histograms, bins=bins
    )
