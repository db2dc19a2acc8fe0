"""The numbers the report's charts plot, read from the records: no HTML, no matplotlib.

Each parameter's gradient norm over the recorded passes (the norms chart, the table's
sparklines and the notebook's table), and the mean and max |grad| per layer in one pass (the
flow chart), with the layers that got no gradient kept as gaps that say why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._watch.records import BackwardRecord, GradRecord, names_in
from .plots import LayerFlow, NormSeries

__all__ = ["layer_flow", "norm_series", "ordered"]


def _norm(grad: GradRecord) -> float:
    return grad.recorded.norm  # recorded for every pass; .stats might compute the full set


def ordered(names: Sequence[str], order: Sequence[str]) -> list[str]:
    """``names`` in the order of ``order``; names not in it after, in their own order."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(names, key=lambda name: rank.get(name, len(rank)))


def norm_series(records: Sequence[BackwardRecord], order: Sequence[str] = ()) -> list[NormSeries]:
    """Each parameter's gradient norm in every recorded pass where it got a gradient.

    Parameters come in ``order`` (module order, say), the others after in order of first sight.
    """
    series = []
    for name in ordered(names_in(records), order):
        points = [(r.index, _norm(r.grads[name])) for r in records if name in r.grads]
        series.append(NormSeries(name, tuple(p for p, _ in points), tuple(v for _, v in points)))
    return series


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _tensor_of(grad: GradRecord) -> torch.Tensor | None:
    """The gradient this pass left, or None when it was dropped or changed in place since."""
    if grad.modified:  # clip_grad_norm_ and the like rewrote .grad after the pass: value gone
        return None
    return grad.after if grad.accumulated else grad.delta


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    values = tensor.detach()
    if values.layout != torch.strided:
        values = values.to_dense()
    return values.reshape(-1).to(torch.float64)


def layer_flow(record: BackwardRecord, order: Sequence[str] = ()) -> tuple[list[LayerFlow], bool]:
    """Mean and max |grad| per layer (parameters grouped by module) in one pass.

    A layer none of whose parameters received a gradient comes back with ``missing`` set to
    ``"no gradient"`` or ``"frozen"`` and no values. Returns the layers in the order of their
    parameters in ``order`` and whether exact means were available: when the pass's tensors
    were not kept (``keep="none"``, an older pass, or ``.grad`` changed in place after the
    pass, as ``clip_grad_norm_`` does), the root mean square ``norm / sqrt(numel)`` stands in
    for the mean and the max is unknown.
    """
    layers: dict[str, list[GradRecord]] = {}
    # Layers none of whose parameters got a gradient are kept, as gaps that say why: a chart
    # that silently left them out would hide exactly the layer that does not learn.
    absent = {name: "no gradient" for name in record.missing}
    absent.update((name, "frozen") for name in record.frozen)
    for name in ordered([*record.grads, *(n for n in absent if n not in record.grads)], order):
        grad = record.grads.get(name)
        layers.setdefault(_layer_of(name), []).extend([grad] if grad is not None else [])
    flows = []
    exact = True
    for layer, grads in layers.items():
        if not grads:
            why = {absent[n] for n in absent if _layer_of(n) == layer}
            flows.append(LayerFlow(layer, None, None, missing=" / ".join(sorted(why))))
            continue
        tensors = [_tensor_of(g) for g in grads]
        if any(t is None for t in tensors):
            exact = False
            stats = [g.stats for g in grads]
            count = sum(s.numel for s in stats)
            squares = sum(s.norm**2 for s in stats)
            highs = [s.abs_max for s in stats]
            flows.append(
                LayerFlow(
                    layer=layer,
                    mean_abs=math.sqrt(squares / count) if count else None,
                    max_abs=None if None in highs else max(h for h in highs if h is not None),
                    finite=all(s.finite for s in stats),
                )
            )
            continue
        values = torch.cat([_flat(t) for t in tensors if t is not None])
        finite = torch.isfinite(values)
        magnitudes = values[finite].abs()
        flows.append(
            LayerFlow(
                layer=layer,
                mean_abs=float(magnitudes.mean()) if magnitudes.numel() else None,
                max_abs=float(magnitudes.max()) if magnitudes.numel() else None,
                finite=bool(finite.all()),
            )
        )
    return flows, exact
