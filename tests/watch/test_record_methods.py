"""The methods through which the rest of the watch changes or reads a record's private state.

Each test builds records the way the watch does (``GradRecord.from_pass`` and
``attach_reading``) and checks the method against numbers worked out by hand or numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradscope import BackwardRecord, GradRecord, GradscopeError, GradStats
from gradscope._watch.reading import Reading
from gradscope._watch.records import attach_reading


def _live(tensor: torch.Tensor, **parts: torch.Tensor | None) -> GradRecord:
    """A record whose ``after`` is ``tensor`` itself, as ``.grad`` held it (not a copy)."""
    record = GradRecord.from_pass(
        "w", 1, tensor.shape, 0, after=tensor, source_version=tensor._version, **parts
    )
    attach_reading([record], Reading([tensor]), None)
    return record


def _copied(tensor: torch.Tensor, **parts: torch.Tensor | None) -> GradRecord:
    """A record whose ``after`` is the watch's own copy."""
    record = GradRecord.from_pass("w", 1, tensor.shape, 0, after=tensor, **parts)
    attach_reading([record], Reading([tensor]), None)
    return record


# ------------------------------------------------------------------------ swap_for_copy
def test_swap_for_copy_takes_the_copy_for_after_and_delta() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad, delta=grad)
    copy = grad.clone()
    record.swap_for_copy(grad, copy)
    grad.add_(1.0)  # the next backward adds into .grad: the record no longer cares
    assert not record.modified
    assert record.after is copy and record.delta is copy  # its own copy, handed out as is
    assert record.stats.norm == 5.0


def test_swap_for_copy_keeps_a_delta_that_is_another_tensor() -> None:
    grad, delta = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])
    record = _live(grad, delta=delta)
    copy = grad.clone()
    record.swap_for_copy(grad, copy)
    assert record.after is copy and record.delta is delta


def test_swap_for_copy_of_a_grad_changed_since_marks_the_record_modified() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad)
    grad.mul_(0.5)  # e.g. clip_grad_norm_ before the next backward
    copy = grad.clone()
    record.swap_for_copy(grad, copy)
    assert record.modified
    with pytest.raises(GradscopeError, match="changed in place"):
        record.after  # noqa: B018
    assert record.recorded.norm == 5.0  # the norm taken when the pass ended stays


def test_swap_for_copy_after_a_rescale_marks_the_record_modified() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = GradRecord.from_pass("w", 1, grad.shape, 0, after=grad, source_version=grad._version)
    attach_reading([record], Reading([grad]), lambda: True)  # GradScaler.unscale_ ran since
    record.swap_for_copy(grad, grad.clone())
    assert record.modified


def test_swap_for_copy_leaves_other_tensors_and_own_copies_alone() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad)
    other = torch.tensor([3.0, 4.0])
    record.swap_for_copy(other, other.clone())  # not the tensor the record holds
    assert record.drop_tensors() == []  # still .grad itself: nothing of ours to reuse
    copied = _copied(grad)
    copied.swap_for_copy(grad, torch.zeros(2))  # already the watch's copy
    assert copied.after is grad


# ---------------------------------------------------------------------- set_across_ranks
def test_set_across_ranks_gives_stats_and_rank_stats_unscaled() -> None:
    shard = torch.tensor([6.0, 8.0])
    record = GradRecord.from_pass("w", 1, torch.Size([4]), 0, after=shard, loss_scale=2.0)
    attach_reading([record], Reading([shard]), None)
    assert record.rank_stats is None and record.stats.norm == 5.0  # this shard, unscaled
    whole = GradStats(numel=4, norm=20.0, nan=1, inf=0)
    ranks = [
        GradStats(numel=2, norm=10.0, nan=0, inf=0),
        GradStats(numel=2, norm=0.0, nan=1, inf=0),
    ]
    record.set_across_ranks(whole, ranks)
    assert record.stats == GradStats(numel=4, norm=10.0, nan=1, inf=0)  # whole / loss scale
    assert record.recorded == record.stats
    assert record.rank_stats == [
        GradStats(numel=2, norm=5.0, nan=0, inf=0),
        GradStats(numel=2, norm=0.0, nan=1, inf=0),
    ]
    assert record.local_stats.norm == 5.0  # this rank's shard, as before


# ---------------------------------------------------------------------- drop_if_orphaned
def _parts() -> dict[str, torch.Tensor]:
    return {"before": torch.ones(2), "delta": torch.full((2,), 2.0), "local": torch.zeros(2)}


def test_drop_if_orphaned_lets_go_of_every_tensor_and_keeps_the_statistics() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad, **_parts())
    assert record.drop_if_orphaned(torch.zeros(2)) is False  # .grad is another tensor now
    assert (record.before, record.after, record.delta, record.local) == (None,) * 4
    assert record.nbytes() == 0
    assert record.recorded == GradStats(numel=2, norm=5.0, nan=0, inf=0)


def test_drop_if_orphaned_keeps_a_grad_still_in_place() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad, **_parts())
    assert record.drop_if_orphaned(grad) is True
    assert record.nbytes() == 4 * 2 * 4  # before, after, delta, local


def test_drop_if_orphaned_after_zero_grad_set_to_none() -> None:
    grad = torch.tensor([3.0, 4.0])
    record = _live(grad)
    assert record.drop_if_orphaned(None) is False and record.nbytes() == 0


def test_drop_if_orphaned_keeps_the_watchs_own_copies() -> None:
    copied = _copied(torch.tensor([3.0, 4.0]), **_parts())
    assert copied.drop_if_orphaned(None) is True and copied.nbytes() == 4 * 2 * 4
    empty = GradRecord.from_pass("w", 1, torch.Size([2]), 0)
    assert empty.drop_if_orphaned(None) is False  # holds nothing: nothing kept


# ---------------------------------------------------------------------------- local_norm
def test_local_norm_against_numpy_without_handing_the_tensor_out() -> None:
    values = np.array([3.0, -4.0, np.nan, np.inf, 12.0], dtype=np.float32)
    local = torch.from_numpy(values.copy())
    record = _copied(torch.zeros(5), local=local)
    got = record.local_norm()
    assert got is not None
    norm, bad = got
    assert math.isnan(norm) and math.isnan(np.linalg.norm(values.astype(np.float64)))
    assert bad == int((~np.isfinite(values)).sum()) == 2
    kept = torch.tensor([1.0, 2.0, 2.0])
    finite = _copied(torch.zeros(3), local=kept)
    assert finite.local_norm() == (float(np.linalg.norm([1.0, 2.0, 2.0])), 0) == (3.0, 0)
    # read, not handed out: the tensor may still be reused as a copy buffer
    assert any(t is kept for t in finite.drop_tensors())


def test_local_norm_is_none_without_a_local_gradient() -> None:
    assert _copied(torch.ones(2)).local_norm() is None
    record = _copied(torch.ones(2), local=torch.ones(2))
    record.drop_tensors()
    assert record.local_norm() is None


def test_local_norm_takes_float64() -> None:
    local = torch.full((4,), 3e38, dtype=torch.float32)  # its float32 norm overflows to inf
    assert math.isinf(float(local.norm()))
    record = _copied(torch.zeros(4), local=local)
    expected = float(np.linalg.norm(local.numpy().astype(np.float64)))
    assert record.local_norm() == (pytest.approx(expected, rel=1e-15), 0)
    assert math.isfinite(expected)


# -------------------------------------------------------------------------- held_befores
def test_held_befores_lists_accumulated_gradients_that_held_a_value() -> None:
    held_a, held_c = torch.ones(2), torch.full((3,), 2.0)
    grads = {
        "a": GradRecord.from_pass("a", 1, torch.Size([2]), 0, before=held_a),
        "b": GradRecord.from_pass("b", 1, torch.Size([2]), 1),  # .grad was None
        "c": GradRecord.from_pass("c", 1, torch.Size([3]), 2, before=held_c),
        "d": GradRecord.from_pass(
            "d", 1, torch.Size([2]), 3, before=torch.ones(2), accumulated=False
        ),
    }
    record = BackwardRecord(1, grads, [], [])
    held = record.held_befores()
    assert list(held) == ["a", "c"] and held["a"] is held_a and held["c"] is held_c
    # not handed out: the watch may still reuse them as buffers
    assert any(t is held_a for t in grads["a"].drop_tensors())


def test_held_befores_is_empty_when_every_grad_was_cleared() -> None:
    grads = {n: GradRecord.from_pass(n, 1, torch.Size([2]), i) for i, n in enumerate("ab")}
    assert BackwardRecord(1, grads, [], []).held_befores() == {}
    assert BackwardRecord(1, {}, [], []).held_befores() == {}


# -------------------------------------------------------------------------- recorded_raw
def test_recorded_raw_is_the_reading_before_unscaling() -> None:
    after = torch.tensor([6.0, 8.0, float("inf"), float("nan"), float("nan")])
    record = GradRecord.from_pass("w", 1, after.shape, 0, after=after, loss_scale=4.0)
    attach_reading([record], Reading([after]), None)
    norm, nan, inf = record.recorded_raw()
    assert math.isnan(norm) and (nan, inf) == (2, 1)
    finite = GradRecord.from_pass("w", 1, torch.Size([2]), 0, after=after[:2], loss_scale=4.0)
    attach_reading([finite], Reading([after[:2]]), None)
    assert finite.recorded_raw() == (10.0, 0, 0)
    assert finite.recorded.norm == 2.5  # recorded unscales, recorded_raw does not
    with pytest.raises(GradscopeError, match="no statistics"):
        GradRecord.from_pass("w", 1, torch.Size([2]), 0).recorded_raw()


# ------------------------------------------------------------------------- any_nonfinite
def _pass(*afters: torch.Tensor, shared: bool = True) -> BackwardRecord:
    grads = {
        f"p{i}": GradRecord.from_pass(f"p{i}", 1, t.shape, i if shared else 0, after=t)
        for i, t in enumerate(afters)
    }
    if shared:
        attach_reading(list(grads.values()), Reading(list(afters)), None)
    else:
        for t, record in zip(afters, grads.values(), strict=True):
            attach_reading([record], Reading([t]), None)
    return BackwardRecord(1, grads, [], [])


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_any_nonfinite_agrees_with_numpy_and_the_full_statistics(
    shared: bool, bad: float | None
) -> None:
    values = [np.array([1.0, 2.0]), np.array([3.0, -4.0, 0.0]), np.array([5.0])]
    if bad is not None:
        values[2][0] = bad
    record = _pass(*(torch.from_numpy(v) for v in values), shared=shared)
    expected = not all(np.isfinite(v).all() for v in values)
    assert record.any_nonfinite() is expected
    assert bool(record.nonfinite) is expected


def test_any_nonfinite_reads_fsdp2s_whole_gradient_and_empty_passes() -> None:
    record = _pass(torch.ones(2), torch.ones(3))  # this rank's shards are finite
    whole = GradStats(numel=4, norm=math.nan, nan=1, inf=0)  # another rank's is not
    record.grads["p1"].set_across_ranks(whole, [whole])
    assert record.any_nonfinite() is True
    assert BackwardRecord(1, {}, [], []).any_nonfinite() is False
