"""The end-of-pass statistics: both read paths against numpy and against each other.

The deferred path (how a CUDA device reads) runs here on the CPU through ``CopyLater``, the same
seam ``tests/watch/conftest.py`` uses to run every watch test through both paths.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from read_paths import CopyLater

from gradscope._watch.reading import CopyNow, Reading, device_counts

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
special = st.sampled_from([0.0, -0.0, 1.0, -2.5, math.nan, math.inf, -math.inf, 1e-30, 6e4])


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7))
    values = st.one_of(st.floats(-1e4, 1e4, width=32), special)
    return torch.from_numpy(draw(hnp.arrays(np.float64, shape, elements=values))).to(dtype)


def numpy_counts(tensor: torch.Tensor) -> tuple[int, int]:
    x = tensor.to(torch.float64).numpy()
    return int(np.isnan(x).sum()), int(np.isinf(x).sum())


@settings(max_examples=60, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=6))
def test_device_counts_match_numpy(group: list[torch.Tensor]) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in group:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for same in by_dtype.values():
        finite, inf = device_counts(same)
        counts = [
            (t.numel() - int(f) - int(i), int(i)) for t, f, i in zip(same, finite, inf, strict=True)
        ]
        assert counts == [numpy_counts(t) for t in same]


@settings(max_examples=60, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=6))
def test_both_read_paths_give_the_same_statistics(group: list[torch.Tensor]) -> None:
    now = Reading(group, copy_for=lambda device: CopyNow())
    later = Reading(group, copy_for=lambda device: CopyLater())
    assert later.pending and not now.pending
    for i, tensor in enumerate(group):
        norm_now, *counts_now = now.get(i)
        norm_later, *counts_later = later.get(i)
        assert counts_now == counts_later == list(numpy_counts(tensor))
        exact = math.sqrt(math.fsum(v * v for v in tensor.to(torch.float64).flatten().tolist()))
        for norm in (norm_now, norm_later):
            if math.isnan(exact):
                assert math.isnan(norm)
            else:
                assert norm == pytest.approx(exact, rel=1e-6)


def test_device_counts_in_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradscope._watch.reading as reading

    torch.manual_seed(0)
    group = [torch.randn(n) for n in (3, 7, 1, 12, 5)]
    for i, t in enumerate(group):
        t[i % t.numel()] = [math.nan, math.inf, -math.inf][i % 3]
    whole = device_counts(group)
    monkeypatch.setattr(reading, "_CHUNK", 8)  # several chunks, one tensor larger than a chunk
    assert len(reading._chunks(group)) > 2
    for a, b in zip(device_counts(group), whole, strict=True):
        assert torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=6), st.booleans())
def test_any_nonfinite_matches_numpy_on_both_read_paths(
    group: list[torch.Tensor], one_dtype: bool
) -> None:
    if one_dtype:  # the short path: one device, one dtype, read now
        group = [t.to(group[0].dtype) for t in group]
    expected = any(sum(numpy_counts(t)) for t in group)
    for copy in (CopyNow(), CopyLater()):
        reading = Reading(group, copy_for=lambda device, copy=copy: copy)
        assert reading.any_nonfinite() is expected
        # the same answer as asking tensor by tensor
        assert expected is any(nan or inf for _, nan, inf in map(reading.get, range(len(group))))


def test_chunks_hold_at_most_chunk_elements_unless_one_tensor_is_larger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The temporaries of the NaN/Inf counts are bounded: tensors are taken in order, a chunk
    closes before the tensor that would take it past ``_CHUNK`` elements (worked out by hand)."""
    import gradscope._watch.reading as reading

    monkeypatch.setattr(reading, "_CHUNK", 8)
    sizes = [3, 5, 12, 7, 1, 2, 2, 2, 2, 1]
    chunks = reading._chunks([torch.zeros(n) for n in sizes])
    expected = [[3, 5], [12], [7, 1], [2, 2, 2, 2], [1]]
    assert [[t.numel() for t in chunk] for chunk in chunks] == expected


@pytest.mark.parametrize("later", [False, True])
def test_an_empty_gradient_reads_as_norm_zero_among_others(later: bool) -> None:
    group = [torch.tensor([3.0, 4.0]), torch.empty(0), torch.tensor([math.inf, 1.0])]
    copy = CopyLater() if later else CopyNow()
    reading = Reading(group, copy_for=lambda device: copy)
    assert reading.get(0) == (pytest.approx(5.0), 0, 0)
    assert reading.get(1) == (0.0, 0, 0)  # numpy: the norm of nothing is 0
    assert float(np.linalg.norm(np.empty(0))) == 0.0
    assert reading.get(2)[1:] == (0, 1) and reading.any_nonfinite()
    assert [reading.numel(i) for i in range(3)] == [2, 0, 2]


@pytest.mark.parametrize("dtypes", ["one", "mixed"])
def test_norms_already_taken_are_used_as_given(dtypes: str) -> None:
    """``known`` norms (taken in the hooks) are not taken again; the others are numpy's. A
    deliberately different number shows which one the reading uses."""
    torch.manual_seed(0)
    group = [torch.randn(5), torch.randn(3, 2), torch.randn(4)]
    if dtypes == "mixed":  # the general path: one fused norm per (device, dtype)
        group[2] = group[2].double()
    known = [torch.tensor(7.0), None, torch.tensor(9.0, dtype=group[2].dtype)]
    reading = Reading(group, known, copy_for=lambda device: CopyNow())
    assert reading.get(0) == (7.0, 0, 0)
    assert reading.get(2) == (9.0, 0, 0)
    expected = float(np.linalg.norm(group[1].double().numpy().ravel()))
    assert reading.get(1)[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtypes", ["one", "mixed"])
def test_a_group_whose_every_norm_was_taken_already(dtypes: str) -> None:
    """Every gradient of a dtype measured in the hooks: nothing is left to measure there (torch's
    fused norm refuses an empty list; this raised before, and the pass had no record)."""
    group = [torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])]
    if dtypes == "mixed":
        group[1] = group[1].double()
    known = [torch.tensor(5.0), None if dtypes == "mixed" else torch.tensor(10.0)]
    reading = Reading(group, known, copy_for=lambda device: CopyNow())
    assert [reading.get(i) for i in range(2)] == [(5.0, 0, 0), (10.0, 0, 0)]


def _now(device: torch.device) -> CopyNow:
    return CopyNow()


def _later(device: torch.device) -> CopyLater:
    return CopyLater()


@pytest.mark.parametrize("copy_for", [_now, _later], ids=["read-now", "read-later"])
def test_unchanged_tells_an_in_place_change_from_none(copy_for) -> None:  # type: ignore[no-untyped-def]
    """``unchanged`` is how a record knows ``.grad`` still holds what the pass left: checked
    against the tensor as it was (True) and after changes made by hand (False)."""
    one = torch.tensor([3.0])  # a single element
    empty = torch.empty(0)
    wide = torch.tensor([3.0, 4.0], dtype=torch.float64)
    reading = Reading([one, empty, wide], copy_for=copy_for)
    assert reading.unchanged(0, one) and reading.unchanged(1, empty) and reading.unchanged(2, wide)
    assert not reading.unchanged(0, torch.tensor([3.0, 0.0]))  # another number of elements
    assert not reading.unchanged(0, one * 2)
    # a float64 change far below float32 precision, far above the deferred read's 1e-12
    assert not reading.unchanged(2, wide * (1 + 1e-10))


def test_unchanged_compares_the_finite_part_of_a_gradient_with_nan() -> None:
    """A NaN makes every norm NaN: read now, the finite elements' norm (here 5, by hand) tells
    whether the rest was rescaled in place (GradScaler.unscale_ bumps no version)."""
    for bad in (math.nan, math.inf):
        grad = torch.tensor([bad, 3.0, 4.0])
        reading = Reading([grad], copy_for=_now)
        assert reading.unchanged(0, grad.clone())
        assert not reading.unchanged(0, grad * 0.5)


@pytest.mark.parametrize(("dtype", "n"), [(torch.bfloat16, 1001), (torch.float16, 4100)])
def test_device_counts_are_exact_past_what_the_dtype_counts_exactly(dtype, n) -> None:  # type: ignore[no-untyped-def]
    """bfloat16 holds integers exactly only up to 256, float16 up to 2048: the counts are summed
    in float64 (numpy's counts of the same tensor are the oracle)."""
    tensor = torch.ones(n, dtype=dtype)
    tensor[0], tensor[1], tensor[2] = math.nan, math.inf, -math.inf
    finite, inf = device_counts([tensor])
    nan_count, inf_count = numpy_counts(tensor)
    assert (int(finite[0]), int(inf[0])) == (n - nan_count - inf_count, inf_count) == (n - 3, 2)


def test_the_deferred_read_waits_on_its_event_once() -> None:
    copy = CopyLater()
    reading = Reading([torch.ones(3), torch.ones(2)], copy_for=lambda device: copy)
    assert reading.pending and [e.waits for e in copy.events] == [0]
    assert reading.get(1) == (pytest.approx(math.sqrt(2)), 0, 0)
    assert reading.get(0) == (pytest.approx(math.sqrt(3)), 0, 0) and not reading.pending
    assert [e.waits for e in copy.events] == [1]


def test_a_cuda_device_reads_later_and_others_now() -> None:
    """Only the choice: constructing a CopyAsync touches no device (its copies need CUDA)."""
    from gradscope._watch.reading import CopyAsync, host_copy_for

    assert isinstance(host_copy_for(torch.device("cuda", 0)), CopyAsync)
    assert host_copy_for(torch.device("cuda")).deferred is True
    for device in ("cpu", "meta"):
        assert type(host_copy_for(torch.device(device))) is CopyNow
        assert host_copy_for(torch.device(device)).deferred is False


def test_one_dtype_read_now_rechecks_nan_after_a_finite_norm_and_tiny_norms() -> None:
    """The short path's recheck: a NaN after a finite norm is counted, and float32 squares that
    underflow (1e-30 ** 2) are redone in float64 (numpy's norm of the same values)."""
    tiny = torch.full((4,), 1e-30)
    reading = Reading([torch.ones(4), torch.tensor([math.nan, 1.0]), tiny], copy_for=_now)
    norm, nan, inf = reading.get(1)
    assert math.isnan(norm) and (nan, inf) == (1, 0) and reading.any_nonfinite()
    expected = float(np.linalg.norm(tiny.double().numpy()))
    assert reading.get(2) == (pytest.approx(expected, rel=1e-6), 0, 0)
    small = Reading([torch.ones(4), tiny], copy_for=_now)  # all finite: only the tiny recheck
    assert small.get(1)[0] == pytest.approx(expected, rel=1e-6)


def test_norms_left_to_measure_are_taken_in_float32_for_bfloat16() -> None:
    """Beside a norm taken already, a bfloat16 gradient is measured in its reduction dtype
    (float32), not in bfloat16 (numpy's float64 norm of the same values is the oracle)."""
    torch.manual_seed(0)
    group = [torch.randn(1000).bfloat16(), torch.randn(1000).bfloat16()]
    reading = Reading(group, [torch.tensor(1.0), None], copy_for=_now)
    expected = float(np.linalg.norm(group[1].double().numpy()))
    assert reading.get(1)[0] == pytest.approx(expected, rel=1e-5)


def test_the_short_path_takes_one_dtype_of_dense_real_nonempty_tensors() -> None:
    """The short path keeps no element counts of its own (``numel`` is None: each tensor's own);
    anything else (two dtypes, complex, sparse, an empty tensor) takes the general path."""
    plain = [torch.ones(3), torch.ones(2, 2, requires_grad=True)]
    assert [Reading(plain, copy_for=_now).numel(i) for i in range(2)] == [None, None]
    others = {
        "two dtypes": [torch.ones(3), torch.ones(2, dtype=torch.float64)],
        "complex": [torch.ones(3, dtype=torch.complex64)],
        "sparse": [torch.ones(3).to_sparse()],
        "empty": [torch.ones(3), torch.empty(0)],
    }
    for what, group in others.items():
        reading = Reading(group, copy_for=_now)
        assert reading.numel(0) is not None, what
        assert reading.get(0)[0] == pytest.approx(math.sqrt(3)), what


def test_unchanged_retakes_a_bfloat16_norm_in_float32() -> None:
    """The norm is retaken the way it was taken (float32 for bfloat16): taken in bfloat16 it
    would round differently and call an untouched gradient changed."""
    torch.manual_seed(0)
    grad = torch.randn(1000).bfloat16()
    reading = Reading([grad], copy_for=_now)
    in_bf16 = float(torch._foreach_norm([grad], 2)[0])
    assert in_bf16 != reading.get(0)[0]  # (so the test can tell the two apart)
    assert reading.unchanged(0, grad.clone())


def test_a_nan_norm_after_safe_ones_is_still_rechecked() -> None:
    """Python's min() and max() pass over a NaN that is not first ([1, nan] looks safe): the
    NaN norm is caught by the sum, and its counts are taken (numpy's of the same tensor)."""
    bad = torch.tensor([math.nan, 1.0, math.inf])
    reading = Reading([torch.ones(4), bad], copy_for=_now)
    norm, nan, inf = reading.get(1)
    assert math.isnan(norm) and (nan, inf) == numpy_counts(bad) == (1, 1)
    assert reading.get(0) == (2.0, 0, 0) and reading.any_nonfinite()
