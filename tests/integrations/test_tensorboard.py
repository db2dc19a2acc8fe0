"""log_watch / log_record: what lands in the event file, read back with TensorBoard's reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tb_read  # tests/integrations is on sys.path under pytest's default import mode
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import gradscope
from gradscope import GradscopeError
from gradscope.integrations._histogram import Histogram, histograms
from gradscope.integrations.tensorboard import log_record, log_watch, summary_writer


def _train(net: nn.Module, steps: int, **options: object) -> tuple[gradscope.Watch, list[dict]]:
    """Train with a watch and, as the oracle, plain hooks that read each .grad's norm."""
    seen: list[dict[str, float]] = []
    current: dict[str, float] = {}
    handles = [
        p.register_post_accumulate_grad_hook(
            lambda p, name=name: current.__setitem__(name, float(p.grad.norm()))
        )
        for name, p in net.named_parameters()
    ]
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with gradscope.watch(net, **options) as w:  # type: ignore[arg-type]
        for _ in range(steps):
            opt.zero_grad()
            net(torch.randn(2, 1, 32, 32)).pow(2).mean().backward()
            seen.append(dict(current))
            opt.step()
    for h in handles:
        h.remove()
    return w, seen


def test_log_watch_writes_the_newest_record_norms_and_nonfinite_counts(tmp_path: Path) -> None:
    net = gradscope.LeNet()
    w, oracle = _train(net, 3)
    with SummaryWriter(tmp_path) as writer:
        written = log_watch(w, writer)
        log_watch(w, writer, step=100)
    assert sorted(written) == sorted(name for name, _ in net.named_parameters())
    found = tb_read.scalars(tmp_path)
    assert set(found) == {
        f"gradscope/{kind}/{n}" for kind in ("grad_norm", "nonfinite") for n in written
    }
    for name in written:
        steps = found[f"gradscope/grad_norm/{name}"]
        assert set(steps) == {w.last.index, 100}
        # TensorBoard keeps float32: compare at that precision against the plain hook.
        assert steps[100] == pytest.approx(oracle[-1][name], rel=1e-6)
        assert found[f"gradscope/nonfinite/{name}"][100] == 0


def test_every_record_with_log_record(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 3))
    w, oracle = _train(net, 4)
    with summary_writer(tmp_path) as writer:
        for record in w.records:
            log_record(record, writer, record.index)
    found = tb_read.scalars(tmp_path)["gradscope/grad_norm/1.weight"]
    assert sorted(found) == [r.index for r in w.records]
    assert [found[r.index] for r in w.records] == pytest.approx([o["1.weight"] for o in oracle])


def test_histograms_of_a_gradient_with_nan_and_inf(tmp_path: Path) -> None:
    net = nn.Linear(4, 3)
    with gradscope.watch(net) as w:
        (net(torch.ones(1, 4)) * torch.tensor([1.0, float("nan"), 2.0])).sum().backward()
    weight = net.weight.grad.clone()  # row 1 is all NaN
    assert int(torch.isnan(weight).sum()) == 4
    with SummaryWriter(tmp_path) as writer:
        written = log_watch(w, writer, step=7, histograms=True, bins=8)
    assert sorted(written) == ["bias", "weight"]
    hist = tb_read.histograms(tmp_path)
    assert set(hist) == {"gradscope/grad/weight", "gradscope/grad/bias"}
    value = hist["gradscope/grad/weight"][7]
    finite = weight[torch.isfinite(weight)].numpy().astype(np.float64)
    counts, edges = np.histogram(finite, bins=8, range=(finite.min(), finite.max()))
    assert value.num == finite.size == 8
    assert (value.min, value.max) == (finite.min(), finite.max())
    assert value.sum == pytest.approx(finite.sum())
    assert value.sum_squares == pytest.approx((finite**2).sum())
    assert list(value.bucket) == counts.tolist()
    assert list(value.bucket_limit) == pytest.approx(edges[1:].tolist())
    scalars = tb_read.scalars(tmp_path)
    assert scalars["gradscope/nonfinite/weight"][7] == 4
    assert math.isnan(scalars["gradscope/grad_norm/weight"][7])
    assert scalars["gradscope/nonfinite/bias"][7] == 1


def test_an_all_nan_gradient_never_crashes_the_writer(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    with gradscope.watch(net) as w:
        (net(torch.ones(1, 3)) * float("nan")).sum().backward()
    with SummaryWriter(tmp_path) as writer:
        # TensorBoard's own histogram refuses it (the reason the histograms are computed here).
        with pytest.raises(ValueError, match="empty"):
            writer.add_histogram("raw", net.weight.grad, 0)
        written = log_watch(w, writer, histograms=True)
    assert written == []  # no finite value: no histogram, the counts say why
    scalars = tb_read.scalars(tmp_path)
    assert scalars["gradscope/nonfinite/weight"][w.last.index] == 6
    assert scalars["gradscope/nonfinite/bias"][w.last.index] == 2


def test_histograms_need_the_tensors(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    with gradscope.watch(net, keep="none") as w:
        net(torch.ones(1, 3)).sum().backward()
    with SummaryWriter(tmp_path) as writer:
        assert log_watch(w, writer, histograms=True) == []
    assert "gradscope/grad_norm/weight" in tb_read.scalars(tmp_path)
    with gradscope.watch(net) as w:
        net.zero_grad()
        net(torch.ones(1, 3)).sum().backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1e-3)  # rewrites .grad in place
    with SummaryWriter(tmp_path / "clipped") as writer:
        assert log_watch(w, writer, histograms=True) == []


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


@given(
    many=st.lists(st.lists(finite_or_not, min_size=1, max_size=60), min_size=1, max_size=4),
    bins=st.integers(1, 12),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_histograms_match_numpy_over_the_finite_values(
    many: list[list[float]], bins: int, dtype: torch.dtype
) -> None:
    tensors = [torch.tensor(values, dtype=torch.float32).to(dtype) for values in many]
    # Computed together (one transfer for all), checked one by one.
    for tensor, result in zip(tensors, histograms(tensors, bins=bins), strict=True):
        _check_histogram(tensor, result, bins)


def test_constant_and_varied_gradients_together() -> None:
    both = histograms([torch.ones(5), torch.arange(6.0), torch.full((3,), float("nan"))], bins=3)
    assert both[0] is not None and both[0].bucket_counts == (5.0,)
    assert both[1] is not None and both[1].bucket_counts == (2.0, 2.0, 2.0)
    assert both[2] is None


def _check_histogram(tensor: torch.Tensor, result: Histogram | None, bins: int) -> None:
    as64 = tensor.double().numpy()
    finite = as64[np.isfinite(as64)]
    if finite.size == 0:
        assert result is None
        return
    assert result is not None
    assert result.nonfinite == tensor.numel() - finite.size
    assert (result.num, result.min, result.max) == (finite.size, finite.min(), finite.max())
    assert result.sum == pytest.approx(finite.sum(), rel=1e-6, abs=1e-30)
    assert result.sum_squares == pytest.approx((finite**2).sum(), rel=1e-5, abs=1e-30)
    assert sum(result.bucket_counts) == finite.size
    if finite.min() == finite.max():
        assert result.bucket_counts == (finite.size,)
        return
    counts, edges = np.histogram(finite, bins=bins, range=(finite.min(), finite.max()))
    # torch.histc (in float32) and numpy may put a value that sits on an inner edge, up to
    # rounding, in neighbouring buckets: only those may differ.
    inner = edges[1:-1]
    on_edge = sum(
        bool(inner.size) and np.abs(inner - x).min() <= 1e-6 * (finite.max() - finite.min())
        for x in finite
    )
    assert np.abs(np.cumsum(result.bucket_counts) - np.cumsum(counts)).max() <= on_edge
    assert list(result.bucket_limits) == pytest.approx(edges[1:].tolist(), rel=1e-9)


def test_errors_say_what_was_passed(tmp_path: Path) -> None:
    net = nn.Linear(2, 1)
    w = gradscope.watch(net)
    with SummaryWriter(tmp_path) as writer:
        with pytest.raises(GradscopeError, match="nothing to log, no backward pass"):
            log_watch(w, writer)
        net(torch.ones(1, 2)).sum().backward()
        with pytest.raises(TypeError, match=r"takes a gradscope\.Watch"):
            log_watch(net, writer)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"step=1\.5"):
            log_watch(w, writer, step=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="bins=0"):
            log_watch(w, writer, histograms=True, bins=0)
    with pytest.raises(TypeError, match="no add_scalar"):
        log_watch(w, str(tmp_path))
    with pytest.raises(TypeError, match="no add_histogram_raw"):
        log_record(w.last, type("OnlyScalars", (), {"add_scalar": print})(), 0, histograms=True)
    w.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_histograms_on_cuda_match_the_cpu() -> None:
    values = torch.randn(3, 1000)
    values[1, :10] = float("nan")
    values[2] = float("inf")
    on_gpu = histograms([v.cuda() for v in values], bins=16)
    on_cpu = histograms(list(values), bins=16)
    assert on_gpu[2] is None and on_cpu[2] is None
    for gpu, cpu in zip(on_gpu[:2], on_cpu[:2], strict=True):
        assert gpu is not None and cpu is not None
        assert (gpu.num, gpu.nonfinite, gpu.min, gpu.max) == (
            cpu.num,
            cpu.nonfinite,
            cpu.min,
            cpu.max,
        )
        assert gpu.sum == pytest.approx(cpu.sum, rel=1e-6)
        assert sum(gpu.bucket_counts) == sum(cpu.bucket_counts)
