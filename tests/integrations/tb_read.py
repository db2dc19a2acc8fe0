"""Read TensorBoard event files back with TensorBoard's own reader (the oracle for what was
written): {tag: {step: value}} for scalars, {tag: {step: HistogramValue}} for histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _accumulator(folder: Path) -> Any:
    events = sorted(folder.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {folder}"
    accumulators = []
    for path in events:
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        accumulators.append(acc)
    return accumulators


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for acc in _accumulator(folder):
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                steps = out.setdefault(tag, {})
                # (the frameworks' own tags may repeat: HF writes train/epoch again at the end)
                if "gradscope/" in tag:
                    assert event.step not in steps, f"{tag} written twice at step {event.step}"
                steps[event.step] = event.value
    return out


def histograms(folder: Path) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}
    for acc in _accumulator(folder):
        for tag in acc.Tags()["histograms"]:
            for event in acc.Histograms(tag):
                out.setdefault(tag, {})[event.step] = event.histogram_value
    return out
