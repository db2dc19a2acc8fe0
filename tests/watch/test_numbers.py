"""The numbers a record reports, against clones taken by hand and independent references.

Every test runs through both read paths (``read_path`` in conftest.py): statistics read when the
pass ends, and read later as on a CUDA device, from what was computed when the pass ended.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import gradscope

pytestmark = pytest.mark.usefixtures("read_path")


def numpy_counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(NaN, Inf) elements; a complex element with a NaN part is NaN, else Inf if a part is."""
    x = tensor.to(torch.complex128 if tensor.is_complex() else torch.float64).numpy()
    nan = np.isnan(x)
    return int(nan.sum()), int((np.isinf(x) & ~nan).sum())


def test_a_late_read_sees_the_pass_not_the_live_gradient() -> None:
    """A pass with NaN/Inf, zero_grad(set_to_none=False), then a finite pass: the first record
    keeps what the first pass left, read late or not (issue 16: the CUDA path read .grad)."""
    net = nn.Linear(3, 2)
    x = torch.tensor([[1.0, 0.0, 2.0]])
    with gradscope.watch(net) as w:
        (net(x) * torch.tensor([math.inf, 1.0])).sum().backward()  # inf * 0 gives a NaN
        first = {n: p.grad.clone() for n, p in net.named_parameters()}
        net.zero_grad(set_to_none=False)
        net(x).sum().backward()
    record = w.records[0]
    assert sorted(record.nonfinite) == ["bias", "weight"]
    for name, grad in first.items():
        stats = record[name].stats
        assert (stats.nan, stats.inf) == numpy_counts(grad), name
        assert math.isnan(stats.norm) == bool(torch.isnan(grad).any())


def test_norms_never_overflow_or_underflow_for_finite_float64_gradients() -> None:
    for value in (1e300, 1e-200, 1e154):
        param = nn.Parameter(torch.zeros(10, dtype=torch.float64))
        holder = nn.Module()
        holder.p = param
        with gradscope.watch(holder) as w:
            (param * value).sum().backward()
        stats = w.last["p"].stats
        expected = math.hypot(*([value] * 10))  # math.hypot scales: no overflow
        assert stats.norm == pytest.approx(expected, rel=1e-12), value
        assert stats.finite and stats.inf == 0


def test_a_norm_is_recorded_once_and_read_the_same_ever_after() -> None:
    """The same gradient must not report 50.69646 for older passes and 50.69726 for the newest
    (float32 at the end of the pass, float64 on a later full read)."""
    net = nn.Linear(1000, 50)
    x = torch.randn(16, 1000) * 3
    with gradscope.watch(net) as w:
        for _ in range(3):
            net.zero_grad()
            net(x).sum().backward()
        newest = w.last["weight"]
        full = newest.stats.norm
    norms = [r.stats.norm for r in w.history("weight")]
    assert norms == [full] * 3
    assert newest.recorded.norm == full and newest.stats.mean is not None


def complex_holder(values: list[complex]) -> tuple[nn.Module, torch.Tensor]:
    holder = nn.Module()
    holder.p = nn.Parameter(torch.zeros(len(values), dtype=torch.complex64))
    # d/dp of Re(sum(p * c)) is conj(c) in torch's convention: the gradient is `values`
    return holder, torch.tensor(values, dtype=torch.complex64).conj()


def test_complex_gradients_keep_their_imaginary_part() -> None:
    holder, c = complex_holder([3 + 4j, 0, -1j])
    with gradscope.watch(holder) as w:
        (holder.p * c).real.sum().backward()
    grad = holder.p.grad.numpy()
    record = w.last["p"]
    magnitudes = np.abs(grad)
    assert record.recorded.norm == pytest.approx(float(np.linalg.norm(grad)), rel=1e-6)
    stats = record.stats
    assert stats.norm == pytest.approx(math.sqrt(26), rel=1e-6)
    assert stats.abs_max == pytest.approx(5.0) and stats.max == pytest.approx(5.0)
    assert stats.mean == pytest.approx(float(magnitudes.mean()), rel=1e-6)
    assert stats.zero_fraction == pytest.approx(1 / 3)
    torch.testing.assert_close(record.after, holder.p.grad)


@pytest.mark.parametrize(
    "values", [[0j, 0j], [complex(math.nan, 1), 2j], [complex(1, math.inf), 1]]
)
def test_zero_nan_and_inf_complex_gradients_are_recorded(values: list[complex]) -> None:
    holder, c = complex_holder(values)
    with gradscope.watch(holder) as w:
        (holder.p * c).real.sum().backward()
    assert not w.errors and len(w.records) == 1
    stats = w.last["p"].stats
    assert (stats.nan, stats.inf) == numpy_counts(holder.p.grad)
    assert stats.finite == all(math.isfinite(abs(v)) for v in values)


def test_sparse_gradients_are_recorded_as_sparse_tensors() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(10, 3, sparse=True)
    clones = []
    with gradscope.watch(emb, keep="all") as w:
        for tokens in ([1, 2, 2], [2, 5]):
            emb(torch.tensor(tokens)).pow(2).sum().backward()
            clones.append(emb.weight.grad.clone())
    assert not w.errors and [r.missing for r in w.records] == [[], []]
    first, second = (r["weight"] for r in w.records)
    assert first.after.layout == torch.sparse_coo and first.before is None
    torch.testing.assert_close(first.after.to_dense(), clones[0].to_dense())
    torch.testing.assert_close(second.before.to_dense(), clones[0].to_dense())
    torch.testing.assert_close(second.after.to_dense(), clones[1].to_dense())
    torch.testing.assert_close((second.before + second.delta).to_dense(), second.after.to_dense())
    values = clones[1].coalesce().values().numpy()  # statistics are over the stored values
    stats = second.stats
    assert stats.numel == values.size == 9  # rows 1, 2 and 5
    assert stats.norm == pytest.approx(float(np.linalg.norm(values)), rel=1e-6)
    assert stats.mean == pytest.approx(float(values.mean()), rel=1e-6)
    assert second.recorded.norm == stats.norm


def test_norms_taken_inside_the_hooks_match_numpy_under_every_hook_order() -> None:
    """Large gradients (>= 65536 elements) get their norm inside the hook, while hot; the
    others at the end of the pass. Both kinds, mixed in one pass, must give the norm of the final
    ``.grad``: with a fresh ``.grad``, with accumulation, and with a hook registered after the
    watch's that changes the gradient (the norm taken in the hook is then stale)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 256), nn.Tanh(), nn.Linear(256, 3))
    assert net[0].weight.numel() >= 1 << 16 > net[2].weight.numel()
    x = torch.randn(5, 300)

    def expected() -> dict[str, float]:
        return {
            n: float(np.linalg.norm(p.grad.double().numpy().ravel()))
            for n, p in net.named_parameters()
        }

    with gradscope.watch(net) as w:
        net(x).sum().backward()
        fresh = expected()
        net(x).pow(2).sum().backward()  # accumulates into the existing .grad
        accumulated = expected()
        net.zero_grad()
        loss = net(x).sum()
        late = net[0].weight.register_hook(lambda g: g * 3)  # runs after the watch's hook
        loss.backward()
        changed = expected()
        net.zero_grad()
        net(x).sum().backward()  # the watch's hook now runs last: it sees the tripled gradient
        moved = expected()
        late.remove()
    references = (fresh, accumulated, changed, moved)
    for record, reference in zip(w.records, references, strict=True):
        for name, norm in reference.items():
            assert record[name].stats.norm == pytest.approx(norm, rel=1e-5), (record.index, name)


@pytest.mark.parametrize("dtypes", ["float32", "float32 and float64"])
def test_a_model_whose_every_gradient_is_measured_in_the_hooks_is_recorded(dtypes: str) -> None:
    """Bias-free layers of >= 65536 elements each get their norm in the hook; with nothing left
    to measure at the end of the pass (in one dtype, or in one of two), the pass used to lose
    its record to an error (torch's fused norm refuses an empty list). Oracle: numpy."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 256, bias=False), nn.Tanh(), nn.Linear(256, 256, bias=False))
    if dtypes != "float32":
        net.append(nn.Linear(256, 2).double())
    x = torch.randn(3, 256)
    with gradscope.watch(net) as w:
        for _ in range(2):
            net.zero_grad()
            out = net[:3](x)
            (net[3](out.double()) if len(net) > 3 else out).sum().backward()
    assert w.errors == [] and [r.index for r in w.records] == [1, 2]
    for name, param in net.named_parameters():
        expected = float(np.linalg.norm(param.grad.double().numpy().ravel()))
        # float32 sums over 65536 elements: within 1e-5 of numpy's float64
        assert w.last[name].stats.norm == pytest.approx(expected, rel=1e-5), name
