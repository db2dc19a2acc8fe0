"""What the training loop does around the optimizer step: ``.grad`` never cleared between
steps, clipping that shrinks every step, a GradScaler that skips steps."""

from __future__ import annotations

import math

from .._watch.evidence import Evidence
from . import thresholds as T
from .common import Collector, median, ordered, total_norm
from .finding import Finding

__all__ = ["accumulating", "clipping", "scaler"]


def clipping(ev: Evidence, out: Collector) -> None:
    steps = ev.steps
    assert steps is not None
    by_index = {r.index: r for r in ev.records}
    coefficients: list[float] = []
    norms: list[float] = []
    for step in steps.records:
        record = by_index.get(step.after_pass)
        if record is None:
            continue
        names = set(step.names)
        before = total_norm(record, names)
        if not math.isfinite(before) or before == 0:
            continue
        norms.append(before)
        now = step.grad_norm if step.modified else None
        if now is None or not math.isfinite(now):
            coefficients.append(1.0)
            continue
        ratio = now / before
        if ratio > 0 and abs(math.log2(ratio) - round(math.log2(ratio))) < 1e-6 and ratio < 1:
            coefficients.append(1.0)  # a power of two: GradScaler.unscale_, not clipping
            continue
        coefficients.append(min(1.0, ratio))
    if len(coefficients) < T.MIN_STEPS:
        return
    clipped = [c for c in coefficients if c < 0.999]
    share = len(clipped) / len(coefficients)
    if share < T.CLIP_ALWAYS_FRACTION:
        return
    typical = median(clipped)
    threshold = typical * median(norms)
    severity = "warning" if typical < T.CLIP_FAR_BELOW else "info"
    out.add(
        Finding(
            "clipping_always",
            severity,  # type: ignore[arg-type]
            f"Gradient clipping cut the gradient on {len(clipped)} of {len(coefficients)} steps, "
            f"to {typical:.2g} of its size (median): the clip threshold (about {threshold:.3g}) "
            f"is far below the gradient's usual norm ({median(norms):.3g}), so every step is "
            "rescaled and the learning rate is effectively lower.",
            "raise max_norm to about the gradient's usual norm (clip only the spikes), or "
            "lower the learning rate instead of clipping every step",
            params=ordered(ev, {n for s in steps.records for n in s.names}),
            module=None,
            evidence={
                "clipped steps": f"{len(clipped)} of {len(coefficients)}",
                "median clip coefficient": typical,
                "median gradient norm": median(norms),
                "estimated max_norm": threshold,
            },
        )
    )


def accumulating(ev: Evidence, out: Collector) -> None:
    carried = {c.index: c for c in ev.signals.carried}
    records = ev.records
    if len(records) < 3:
        return
    if ev.keep == "none":
        out.skip("grads_accumulating", "keep='none' keeps no .grad from before a pass")
        return

    def kept(index: int) -> bool:
        """Did pass ``index`` start with a non-zero .grad for most of its parameters?"""
        c = carried.get(index)
        if c is None:
            return False
        nonzero = sum(v > 0 for v in c.norms)
        record = next((r for r in records if r.index == index), None)
        return record is not None and nonzero > len(record.grads) / 2

    steps = ev.steps
    indices = [r.index for r in records]
    if steps is not None and steps.records:
        starts = []
        for step in steps.records:
            later = [i for i in indices if i > step.after_pass]
            if later:
                starts.append(later[0])
        if len(starts) < 3:
            return
        bad = [i for i in starts if kept(i)]
        if len(bad) / len(starts) < T.CARRIED_FRACTION:
            return
        what = f"the first backward pass after {len(bad)} of {len(starts)} optimizer steps"
        severity = "error"
    else:
        bad = [i for i in indices[1:] if kept(i)]
        if len(bad) < len(indices) - 1 or len(bad) < 4:
            return
        what = f"every one of the {len(indices)} backward passes"
        severity = "warning"
    first, last = records[0], records[-1]
    grew = total_norm(last) / total_norm(first) if total_norm(first) > 0 else math.inf
    out.add(
        Finding(
            "grads_accumulating",
            severity,  # type: ignore[arg-type]
            f".grad is never cleared: {what} started from a non-zero .grad, so each step "
            f"applies the sum of all gradients so far (the gradient norm grew {grew:.3g}x from "
            f"pass {first.index} to pass {last.index}).",
            "call optimizer.zero_grad() (or model.zero_grad()) once per step, before backward(); "
            "for gradient accumulation, zero after each optimizer.step()",
            params=ordered(ev, records[-1].grads),
            module=None,
            passes=tuple(bad),
            evidence={
                "gradient norm first pass": total_norm(first),
                "gradient norm last pass": total_norm(last),
                "passes starting from a non-zero .grad": len(bad),
            },
        )
    )


def scaler(ev: Evidence, out: Collector) -> None:
    records = ev.records[-50:]
    if ev.scaler:
        scales = [r.loss_scale for r in records if r.loss_scale is not None]
        bad = [r for r in records if r.nonfinite]
        if len(records) < T.MIN_STEPS or len(bad) / len(records) < T.SKIPPED_FRACTION:
            return
        peak, now = max(scales), scales[-1]
        collapsing = (now > 0 and peak / now >= T.SCALE_COLLAPSE) or now < 1
        evidence = {
            "passes with NaN/Inf scaled gradients": f"{len(bad)} of {len(records)}",
            "loss scale": f"{peak:g} -> {now:g}",
        }
        if collapsing:
            out.add(
                Finding(
                    "loss_scale_collapse",
                    "error",
                    f"GradScaler skipped {len(bad)} of the last {len(records)} steps (NaN/Inf "
                    f"gradients) and its scale fell from {peak:g} to {now:g}: the loss or a "
                    "gradient overflows even unscaled, so training has stopped.",
                    "the loss overflows float16: compute the loss in float32 (outside autocast), "
                    "use a mean instead of a sum, normalise targets; if the NaN is real, see "
                    "the other findings",
                    passes=tuple(r.index for r in bad),
                    evidence=evidence,
                )
            )
        else:
            out.add(
                Finding(
                    "skipped_steps",
                    "warning",
                    f"GradScaler skipped {len(bad)} of the last {len(records)} steps (NaN/Inf "
                    "gradients at the current loss scale).",
                    "a few skips while the scale settles are normal; many mean a loss or an "
                    "activation close to float16's limit",
                    passes=tuple(r.index for r in bad),
                    evidence=evidence,
                )
            )
        return
    steps = ev.steps
    if steps is None:
        out.skip("skipped_steps", "needs watch(net, optimizer=opt)")
        out.skip("loss_scale_collapse", "no GradScaler given: watch(net, scaler=scaler)")
        return
    out.skip("loss_scale_collapse", "no GradScaler given: watch(net, scaler=scaler)")
    stepped = {s.after_pass for s in steps.records}
    bad = [r for r in records if r.nonfinite]
    skipped = [r for r in bad if r.index not in stepped]
    if len(records) >= T.MIN_STEPS and len(skipped) / len(records) >= T.SKIPPED_FRACTION:
        out.add(
            Finding(
                "skipped_steps",
                "warning",
                f"No optimizer step followed {len(skipped)} of the last {len(records)} backward "
                "passes, each with NaN/Inf gradients: something (GradScaler?) skips them.",
                "if you use GradScaler, pass it to watch(net, scaler=scaler) to see its scale; "
                "see the NaN/Inf findings for where the values come from",
                passes=tuple(r.index for r in skipped),
                evidence={"skipped": f"{len(skipped)} of {len(records)}"},
            )
        )
