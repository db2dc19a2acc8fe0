"""Records: lookup by alias, statistics that survive dropped tensors, clear errors."""

from __future__ import annotations

import pytest
import torch

from gradscope import BackwardRecord, GradRecord, GradscopeError, UnknownParameterError
from gradscope._watch.reading import Reading
from gradscope._watch.records import attach_reading
from gradscope._watch.stats import full_stats


def _record(name: str, tensor: torch.Tensor) -> GradRecord:
    record = GradRecord.from_pass(name, 1, tensor.shape, 0, after=tensor, delta=tensor)
    attach_reading([record], Reading([tensor]), None)
    return record


def test_lookup_aliases_and_messages() -> None:
    grad = _record("w", torch.tensor([3.0, -4.0]))
    record = BackwardRecord(
        1, {"w": grad}, missing=["m"], frozen=["f"], aliases={"w": "w", "t": "w"}
    )
    assert record["t"] is grad and list(record) == ["w"] and len(record) == 1
    with pytest.raises(UnknownParameterError, match="received no gradient"):
        record["m"]
    with pytest.raises(UnknownParameterError, match="requires_grad=False"):
        record["f"]
    with pytest.raises(UnknownParameterError, match="did you mean 'w'"):
        record["ww"]


def test_stats_are_full_while_kept_and_cheap_after_drop() -> None:
    tensor = torch.tensor([3.0, -4.0, 0.0])
    grad = _record("w", tensor)
    assert grad.stats == full_stats(tensor)
    fresh = _record("w", tensor)
    assert fresh.drop_tensors() == [tensor]  # never handed out: reusable, once
    assert fresh.after is None and fresh.stats.norm == 5.0 and fresh.stats.mean is None
    handed = _record("w", tensor)
    assert handed.after is tensor
    assert handed.drop_tensors() == []  # the user holds it: never reused


def test_a_record_without_statistics_says_so() -> None:
    with pytest.raises(GradscopeError, match="no statistics"):
        GradRecord("w", 1, torch.Size([2])).stats  # noqa: B018


def test_scaler_skipped_needs_a_scale() -> None:
    finite = BackwardRecord(1, {"w": _record("w", torch.ones(2))}, [], [])
    assert finite.scaler_skipped is None and finite.nonfinite == []
    scaled = BackwardRecord(
        1, {"w": _record("w", torch.tensor([float("nan")]))}, [], [], loss_scale=2.0
    )
    assert scaled.scaler_skipped is True and scaled.nonfinite == ["w"]
