"""Which tensors records keep: recycled copy buffers never alias, keep="all" stays in its bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeWarning

pytestmark = pytest.mark.usefixtures("read_path")


@pytest.mark.parametrize("keep", ["last", "all"])
def test_copies_never_share_a_buffer_under_accumulation(keep: str) -> None:
    """copy=True with accumulation and records left unread: ``before`` of a pass used to be the
    very buffer handed out again as its ``after``."""
    net = nn.Linear(3, 2)
    clones = []
    with gradscope.watch(net, copy=True, keep=keep) as w:  # type: ignore[arg-type]
        for k in range(5):
            before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
            net(torch.full((1, 3), float(k + 1))).sum().backward()
            clones.append((before, {n: p.grad.clone() for n, p in net.named_parameters()}))
    records = w.records if keep == "all" else w.records[-1:]
    for record, (before, after) in zip(records, clones[-len(records) :], strict=True):
        for name in after:
            r = record[name]
            torch.testing.assert_close(r.after, after[name], rtol=0, atol=0)
            if name not in before:  # the first pass: .grad was None
                assert r.before is None
                torch.testing.assert_close(r.delta, after[name], rtol=0, atol=0)
                continue
            torch.testing.assert_close(r.before, before[name], rtol=0, atol=0)
            torch.testing.assert_close(r.delta, after[name] - before[name])


def test_keep_all_is_bounded_by_bytes_and_says_what_it_dropped() -> None:
    net = nn.Linear(64, 64)  # 16.6 KB of gradients
    grad_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    with gradscope.watch(net, keep="all", max_bytes=6 * grad_bytes) as w:
        for _ in range(10):
            net(torch.randn(2, 64)).sum().backward()
        with pytest.warns(GradscopeWarning, match=r'keep="all" reached max_bytes'):
            records = w.records
    assert w.max_bytes == 6 * grad_bytes
    kept = [r for r in records if r.dropped is None]
    dropped = [r for r in records if r.dropped == "max_bytes"]
    assert dropped and kept and records[-1] in kept
    assert [r.index for r in dropped + kept] == [r.index for r in records]  # oldest dropped first
    assert sum(r.nbytes() for r in kept) <= 6 * grad_bytes
    for record in dropped:
        assert record["weight"].after is None and record["weight"].stats.norm > 0
    torch.testing.assert_close(records[-1]["weight"].after, net.weight.grad)
    assert "max_bytes" in str(w.summary(dropped[0]))
    w.records  # noqa: B018 - warned once only


def test_the_default_bound_follows_the_model_size() -> None:
    small, big = nn.Linear(4, 4), nn.Linear(2048, 2048)
    assert gradscope.watch(small, keep="all").max_bytes == 256 << 20  # the floor
    grad_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    assert gradscope.watch(big, keep="all").max_bytes == 16 * grad_bytes


def test_keep_last_marks_older_passes_as_dropped() -> None:
    net = nn.Linear(3, 2)
    with gradscope.watch(net) as w:
        for _ in range(3):
            net(torch.randn(1, 3)).sum().backward()
    assert [r.dropped for r in w.records] == ["keep", "keep", None]
