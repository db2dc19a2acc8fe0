"""Print the numbers the thresholds are calibrated on: each zoo script, healthy and broken.

    cd tests/diagnose && python calibrate.py

Per run: the update-to-weight ratio of the weight matrices (median over steps, and the largest
single step), the RMS-gradient ratio between the first and the last weight layer, the largest
jump of the total gradient norm over the passes before it, the largest share of dead units and
the median clip coefficient (the norm at the step over the norm when backward ended).
``gradscope/_diagnose/thresholds.py`` cites what this prints.
"""

from __future__ import annotations

import importlib
import math
import statistics
import sys

import zoo

from gradscope._diagnose.common import total_norm


def numbers(w) -> dict[str, float]:  # type: ignore[no-untyped-def]
    ev = w._monitors.evidence(w.last_graph)
    out: dict[str, float] = {}
    steps = ev.steps.records if ev.steps is not None else []
    medians, peaks = [], []
    for name in ev.order:
        if (
            len(ev.shapes.get(name, ())) < 2
            or ev.module_types.get(name.rpartition(".")[0]) == "Embedding"
        ):
            continue
        ratios = [
            s.update_norms[k] / s.weight_norms[k]
            for s in steps
            for k, n in enumerate(s.names)
            if n == name and s.weight_norms[k] > 0 and n not in s.no_grad
        ]
        ratios = [r for r in ratios if math.isfinite(r)]
        if ratios:
            medians.append(statistics.median(ratios))
            peaks.append(max(ratios))
    if medians:
        out["ratio median min"] = min(medians)
        out["ratio median max"] = max(medians)
        out["ratio step max"] = max(peaks)
    finite = [r for r in ev.records if not r.nonfinite]
    totals = [total_norm(r) for r in finite]
    jumps = [
        totals[k] / statistics.median(totals[max(0, k - 10) : k])
        for k in range(1, len(totals))
        if statistics.median(totals[max(0, k - 10) : k]) > 0
    ]
    if jumps:
        out["largest jump"] = max(jumps)
    by_index = {r.index: r for r in ev.records}
    coefficients = [
        s.grad_norm / total_norm(by_index[s.after_pass], set(s.names))
        for s in steps
        if s.modified and s.grad_norm is not None and s.after_pass in by_index
    ]
    if coefficients:
        out["clip coefficient median"] = statistics.median(coefficients)
    streaks = ev.signals.streaks()
    if streaks and ev.signals.streak_passes >= 10:
        out["dead share max"] = max(
            sum(s >= 10 for s in v) / len(v) for v in streaks.values() if len(v) > 1
        )
    return out


def main() -> None:
    names = sys.argv[1:] or zoo.SCRIPTS
    for name in names:
        script = importlib.import_module(f"zoo.{name}")
        for mistake in (False, True):
            w = script.train(mistake=mistake)
            shown = ", ".join(f"{k} {v:.3g}" for k, v in numbers(w).items())
            print(f"{name:26s} {'BUG    ' if mistake else 'healthy'} {shown}")


if __name__ == "__main__":
    main()
