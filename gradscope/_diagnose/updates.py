"""What the optimizer steps did: parameters that never move, updates far too large or small.

What the loop does around the step (``.grad`` never cleared, clipping, GradScaler) is found by
:mod:`.loop`; :func:`check` runs both."""

from __future__ import annotations

import math
from typing import Any

from .._watch.evidence import Evidence, module_of
from .._watch.sampling import SAMPLE
from .._watch.steps import StepRecord
from . import loop
from . import thresholds as T
from .common import Collector, common_module, median, ordered, rms
from .finding import Finding, names_text

__all__ = ["check"]

NOT_UPDATED_MIN_STEPS = 3


def check(ev: Evidence, out: Collector) -> None:
    loop.scaler(ev, out)
    loop.accumulating(ev, out)
    if ev.steps is None:
        why = "needs watch(net, optimizer=opt)"
        for kind in ("not_updated", "update_ratio", "clipping_always"):
            out.skip(kind, why)
        return
    series = _series(ev.steps.records)
    stuck = _not_updated(ev, out, series)
    _update_ratio(ev, out, series, stuck)
    loop.clipping(ev, out)


def _series(records: Any) -> dict[str, list[tuple[StepRecord, int]]]:
    """For each parameter, the steps that held it and its row in each."""
    out: dict[str, list[tuple[StepRecord, int]]] = {}
    for record in records:
        for k, name in enumerate(record.names):
            out.setdefault(name, []).append((record, k))
    return out


def _not_updated(
    ev: Evidence, out: Collector, series: dict[str, list[tuple[StepRecord, int]]]
) -> set[str]:
    lr_zero: list[str] = []
    never: list[str] = []
    too_small: list[str] = []
    zero_grad: list[str] = []
    decay_only: list[str] = []
    evidence: dict[str, Any] = {}
    for name, rows in series.items():
        rows = [(r, k) for r, k in rows if name not in r.no_grad]
        if len(rows) < NOT_UPDATED_MIN_STEPS:
            continue
        moved = [r.update_norms[k] for r, k in rows]
        with_grad = [r.with_grad[k] for r, k in rows]
        stuck = [r.stuck[k] for r, k in rows]
        lrs = [r.lrs[k] for r, k in rows]
        if not all(math.isfinite(m) for m in moved):
            continue
        if all(g == 0 for g in with_grad):
            if all(m == 0 for m in moved):
                zero_grad.append(name)
            else:
                decay_only.append(name)
            continue
        if all(s == g for s, g in zip(stuck, with_grad, strict=True)) and all(
            m == 0 for m in moved
        ):
            if all(lr == 0 for lr in lrs):
                lr_zero.append(name)
            elif _below_resolution(ev, name, rows):
                too_small.append(name)
            else:
                never.append(name)
            evidence[name] = f"lr {lrs[-1]:g}, 0 of {with_grad[-1]} sampled elements moved"
    steps = len(ev.steps.records) if ev.steps is not None else 0
    for names, why, fix, severity in (
        (
            lr_zero,
            "its learning rate is 0 in its param group",
            "give the param group a non-zero lr (check per-layer lr dicts and schedulers that "
            "start at 0, e.g. warm-up with LambdaLR returning 0)",
            "error",
        ),
        (
            never,
            "the optimizer did not move it although its gradient and lr are non-zero",
            "look for a step hook or code that restores the weights after step(), or an "
            "optimizer subclass that skips this group",
            "error",
        ),
        (
            too_small,
            "lr times its gradient is below float32's resolution at its weights' size (the "
            "gradient vanished), so each update rounds to nothing",
            "fix the vanishing gradient (see the other findings) or raise the learning rate",
            "warning",
        ),
        (
            zero_grad,
            "its gradient is exactly zero at every step: it has no effect on the loss (a bias "
            "that cancels out, before a difference or a normalisation) or a hook or mask "
            "zeroes its gradient",
            "if it should learn, find what zeroes its gradient (a register_hook returning "
            "zeros, a mask, a 'freeze' that multiplies by 0); if it cancels out, drop it",
            "info",
        ),
        (
            decay_only,
            "its gradient is exactly zero at every step: only weight decay moves it (toward 0)",
            "find what zeroes its gradient; weight decay alone shrinks the weights to 0",
            "warning",
        ),
    ):
        if not names:
            continue
        params = ordered(ev, names)
        out.add(
            Finding(
                "not_updated",
                severity,  # type: ignore[arg-type]
                f"{names_text(params)} never moved in {steps} optimizer steps: {why}.",
                fix,
                params=params,
                module=common_module(params),
                passes=(),
                evidence={n: evidence[n] for n in params if n in evidence}
                or {"optimizer steps": steps},
            )
        )
    return set(lr_zero + never + too_small + zero_grad + decay_only)


def _below_resolution(ev: Evidence, name: str, rows: list[tuple[StepRecord, int]]) -> bool:
    """lr x RMS gradient against RMS weight: below float32's 2**-23 nothing can move."""
    by_index = {r.index: r for r in ev.records}
    sizes = []
    for record, k in rows:
        grad = by_index.get(record.after_pass)
        lr = record.lrs[k]
        weight = record.weight_norms[k]
        if grad is None or name not in grad.grads or not lr or weight <= 0:
            continue
        sampled = min(math.prod(ev.shapes.get(name, (1,))), SAMPLE)
        rms_weight = weight / math.sqrt(sampled)
        sizes.append(lr * rms(ev, name, grad.grads[name].recorded.norm) / rms_weight)
    return bool(sizes) and max(sizes) < 2.0**-22


def _update_ratio(
    ev: Evidence,
    out: Collector,
    series: dict[str, list[tuple[StepRecord, int]]],
    stuck: set[str],
) -> None:
    high: dict[str, float] = {}
    low: dict[str, float] = {}
    spikes: dict[str, tuple[float, StepRecord]] = {}  # the largest single step, when too large
    lrs: dict[str, float | None] = {}
    counted = 0
    for name, rows in series.items():
        if name in stuck or len(ev.shapes.get(name, ())) < 2:
            continue  # biases and norm weights start at 0 or 1: their ratio says little
        if ev.module_types.get(module_of(name)) in ("Embedding", "EmbeddingBag"):
            continue  # only the rows of the tokens in the batch move
        ratios: list[tuple[float, StepRecord]] = []
        for record, k in rows[-100:]:
            if name in record.no_grad:
                continue
            update, weight = record.update_norms[k], record.weight_norms[k]
            if weight > 0 and math.isfinite(update) and math.isfinite(weight):
                ratios.append((update / weight, record))
        if len(ratios) < T.MIN_STEPS:
            continue
        counted = max(counted, len(ratios))
        typical = median([r for r, _ in ratios])
        largest = max(ratios, key=lambda item: item[0])
        lrs[name] = rows[-1][0].lrs[rows[-1][1]]
        if typical > T.UPDATE_RATIO_HIGH or largest[0] > T.UPDATE_STEP_HIGH:
            high[name] = max(typical, largest[0])
            spikes[name] = largest
        elif 0 < typical < T.UPDATE_RATIO_LOW:
            low[name] = typical
    for found, direction, fix in (
        (
            high,
            "above",
            "lower the learning rate for these layers (by about the factor shown), or use "
            "warm-up (usual: Adam/AdamW 1e-4..1e-3, SGD with momentum 1e-3..1e-1)",
        ),
        (
            low,
            "below",
            "raise the learning rate (by about the factor shown); check for an lr meant for "
            "another optimizer or a scheduler that decayed it to almost 0",
        ),
    ):
        if not found:
            continue
        params = ordered(ev, found)
        worst = max(found.values()) if direction == "above" else min(found.values())
        factor = worst / T.UPDATE_RATIO_TYPICAL
        lr_values = sorted({v for n in params if (v := lrs.get(n)) is not None})
        lr_text = ", ".join(f"{v:g}" for v in lr_values[:3])
        plural = len(params) > 1
        evidence: dict[str, Any] = {
            f"|Δp|/|p| {n}": v for n, v in list((n, found[n]) for n in params)[:6]
        }
        evidence["band"] = (
            f"median in [{T.UPDATE_RATIO_LOW:g}, {T.UPDATE_RATIO_HIGH:g}], no step above "
            f"{T.UPDATE_STEP_HIGH:g}, around {T.UPDATE_RATIO_TYPICAL:g} (Karpathy, CS231n)"
        )
        if direction == "above":
            first = min((spikes[n][1] for n in params), key=lambda r: r.index)
            evidence["first step above the band"] = first.index
            evidence["after pass"] = first.after_pass
            relative = _relative_gradient(ev, params, first)
            if relative is not None:
                evidence["|g|/|p| before that step"] = relative
            what = (
                f"Steps change {names_text(params)} by up to {worst:.0%} of "
                f"{'their' if plural else 'its'} size"
            )
        else:
            what = (
                f"Each step changes {names_text(params)} by about {worst:.2g} of "
                f"{'their' if plural else 'its'} size (median over {counted} steps)"
            )
        out.add(
            Finding(
                "update_ratio",
                "warning",
                f"{what}, {factor if factor >= 1 else 1 / factor:.0f}x {direction} the usual "
                f"~1e-3: the learning rate (lr {lr_text}) is probably too "
                f"{'high' if direction == 'above' else 'low'} for "
                f"{'these layers' if plural else 'this layer'}.",
                fix,
                params=params,
                module=common_module(params),
                evidence=evidence,
            )
        )


def _relative_gradient(ev: Evidence, params: tuple[str, ...], step: StepRecord) -> float | None:
    """The largest |g|/|p| among ``params`` in the pass before ``step`` (per element RMS, so
    a sampled weight norm compares with a full gradient norm)."""
    record = next((r for r in ev.records if r.index == step.after_pass), None)
    if record is None:
        return None
    values = []
    for name in params:
        if name not in record.grads or name not in step.names:
            continue
        k = step.names.index(name)
        sampled = min(math.prod(ev.shapes.get(name, (1,))), SAMPLE)
        weight = step.weight_norms[k] / math.sqrt(sampled)
        if weight > 0:
            values.append(rms(ev, name, record.grads[name].recorded.norm) / weight)
    return max(values) if values else None
