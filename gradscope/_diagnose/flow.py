"""How gradients flow: vanishing toward the input, exploding over passes or across depth, dead
units that never pass a gradient."""

from __future__ import annotations

import math
from typing import Any

from .._watch.evidence import Evidence, module_of
from . import thresholds as T
from .common import Collector, common_module, median, norm, ordered, rms, total_norm
from .finding import Finding, names_text

__all__ = ["check"]

# Rows of an embedding get a gradient only for the tokens in the batch: its RMS says nothing
# about depth.
_NOT_LAYERS = {"Embedding", "EmbeddingBag"}


def check(ev: Evidence, out: Collector) -> None:
    finite = [r for r in ev.records if not r.nonfinite]
    _depth(ev, out, finite)
    _over_passes(ev, out, finite)
    _dead(ev, out)


def _layers(ev: Evidence) -> list[str]:
    return [
        n
        for n in ev.order
        if len(ev.shapes.get(n, ())) >= 2
        and math.prod(ev.shapes[n]) > 0
        and ev.module_types.get(module_of(n)) not in _NOT_LAYERS
    ]


def _depth(ev: Evidence, out: Collector, finite: list[Any]) -> None:
    layers = _layers(ev)
    recent = finite[-50:]
    typical: dict[str, float] = {}
    for name in layers:
        values = [v for r in recent if (v := norm(r, name)) is not None]
        if values:
            typical[name] = rms(ev, name, median(values))
    layers = [n for n in layers if typical.get(n, 0) > 0]
    if len(layers) < T.DEPTH_MIN_LAYERS:
        return
    first, last = layers[0], layers[-1]
    ratio = typical[first] / typical[last]
    evidence: dict[str, Any] = {
        f"RMS gradient {n}": typical[n] for n in (layers if len(layers) <= 8 else layers[:4])
    }
    evidence[f"RMS gradient {last}"] = typical[last]
    evidence["input-side / output-side"] = ratio
    passes = tuple(r.index for r in recent)
    if ratio < 1 / T.DEPTH_RATIO:
        small = [n for n in layers if typical[n] < typical[last] / T.DEPTH_RATIO]
        params = ordered(ev, small)
        out.add(
            Finding(
                "vanishing",
                "warning",
                f"Gradients vanish toward the input: the RMS gradient of {first} is "
                f"{1 / ratio:.2g}x smaller than that of {last}, so {names_text(params)} "
                "barely learn.",
                "use ReLU/GELU instead of sigmoid/tanh in deep stacks, an initialisation "
                "matched to the activation (kaiming_normal_ for ReLU), normalisation layers "
                "(BatchNorm/LayerNorm) or residual connections",
                params=params,
                module=common_module(params),
                passes=passes,
                evidence=evidence,
            )
        )
    elif ratio > T.DEPTH_RATIO:
        big = [n for n in layers if typical[n] > typical[last] * T.DEPTH_RATIO]
        params = ordered(ev, big)
        out.add(
            Finding(
                "exploding",
                "error",
                f"Gradients explode toward the input: the RMS gradient of {first} is "
                f"{ratio:.2g}x that of {last}.",
                "use an initialisation that keeps the scale (xavier/kaiming), normalisation "
                "layers or residual connections, and clip_grad_norm_ while you fix it",
                params=params,
                module=common_module(params),
                passes=passes,
                evidence=evidence,
            )
        )


def _over_passes(ev: Evidence, out: Collector, finite: list[Any]) -> None:
    """A pass whose total gradient norm jumped EXPLODING_GROWTH-fold above the passes before
    it (their median): the usual picture of exploding gradients, often the last finite pass
    before NaN/Inf."""
    if len(finite) < 2:
        return
    totals = [total_norm(r) for r in finite]
    best, peak_at, baseline = 0.0, 0, 0.0
    for k in range(1, len(totals)):
        before = median(totals[max(0, k - 10) : k])
        if before > 0 and totals[k] / before > best:
            best, peak_at, baseline = totals[k] / before, k, before
    if best < T.EXPLODING_GROWTH:
        return
    peak = finite[peak_at]
    earlier = finite[max(0, peak_at - 10) : peak_at]
    grew: dict[str, float] = {}
    for name in ev.order:
        start = [v for r in earlier if (v := norm(r, name)) is not None]
        now = norm(peak, name)
        if start and now is not None and median(start) > 0:
            grew[name] = now / median(start)
    params = ordered(ev, [n for n, g in grew.items() if g >= T.EXPLODING_GROWTH] or list(grew))
    # The module whose gradient is largest at the peak: in a recurrent net, the recurrence.
    largest = max(params, key=lambda n: norm(peak, n) or 0.0, default=None)
    first_bad = next((r.index for r in ev.records if r.nonfinite and r.index > peak.index), None)
    evidence: dict[str, Any] = {
        "total gradient norm before (median)": baseline,
        f"total gradient norm, pass {peak.index}": totals[peak_at],
        "growth": best,
        "peak pass": peak.index,
        "largest gradient at the peak": largest,
    }
    if first_bad is not None:
        evidence["NaN/Inf gradients from pass"] = first_bad
    out.add(
        Finding(
            "exploding",
            "error",
            f"Gradients explode: the total gradient norm jumped {best:.2g}x, from {baseline:.3g} "
            f"to {totals[peak_at]:.3g} at pass {peak.index}"
            + (
                f", and the values overflowed to NaN/Inf from pass {first_bad} on"
                if first_bad
                else ""
            )
            + ".",
            "clip the gradient (torch.nn.utils.clip_grad_norm_(params, 1.0) between backward() "
            "and step()), lower the learning rate; for recurrent nets also an initialisation "
            "with gain < 1, shorter sequences (truncated backpropagation) or GRU/LSTM",
            params=params,
            module=module_of(largest) if largest is not None else None,
            passes=tuple(r.index for r in ev.records if r.index >= peak.index),
            evidence=evidence,
        )
    )


def _dead(ev: Evidence, out: Collector) -> None:
    signals = ev.signals
    if signals.streak_passes < T.DEAD_MIN_PASSES:
        if ev.records:
            out.skip(
                "dead_units",
                f"needs {T.DEAD_MIN_PASSES} recorded passes in a row, "
                f"{signals.streak_passes} so far",
            )
        return
    window = {r.index for r in ev.records[-signals.streak_passes :]}
    if ev.forward is not None:
        seen = {r.input_sum for r in ev.forward.records if window.intersection(r.passes)}
        if len(seen) < 2:
            out.skip(
                "dead_units",
                "every pass saw the same input: a unit that is off for it is not dead",
            )
            return
    for name, streak in signals.streaks().items():
        if len(streak) < 2:
            continue
        dead = sum(s >= T.DEAD_MIN_PASSES for s in streak)
        share = dead / len(streak)
        if share < T.DEAD_FRACTION:
            continue
        module = module_of(name)
        params = ordered(ev, [n for n in ev.shapes if module_of(n) == module])
        out.add(
            Finding(
                "dead_units",
                "warning",
                f"{dead} of the {len(streak)} units of '{module or 'the model'}' "
                f"({100 * share:.0f}%) got exactly zero gradient in each of the last "
                f"{min(signals.streak_passes, max(streak))} passes: they never activate (dead "
                "ReLUs), so they never learn.",
                "check the bias initialisation (a large negative bias switches ReLUs off), use a "
                "smaller learning rate, LeakyReLU/GELU, or normalisation before the activation",
                params=params,
                module=module,
                passes=tuple(r.index for r in ev.records[-signals.streak_passes :]),
                evidence={
                    "dead units": f"{dead} of {len(streak)}",
                    "share": share,
                    "measured on": name,
                    "passes in a row": signals.streak_passes,
                },
            )
        )
