"""The recorder behind watch(): hook failures, buffer reuse and when tensors are let go."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeError, GradscopeWarning

pytestmark = pytest.mark.usefixtures("read_path")


def backward(net: nn.Module, x: torch.Tensor) -> None:
    net(x).pow(2).sum().backward()


def test_an_error_inside_a_hook_never_breaks_backward(lenet, lenet_input, monkeypatch) -> None:
    import gradscope._watch.ending as ending_module

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal failure")

    monkeypatch.setattr(ending_module, "Reading", broken)
    expected = torch.autograd.grad(lenet(lenet_input).pow(2).sum(), lenet.conv1.bias)[0]
    w = gradscope.watch(lenet)
    backward(lenet, lenet_input)
    torch.testing.assert_close(lenet.conv1.bias.grad, expected)
    assert len(w.errors) == 1 and "internal failure" in str(w.errors[0])
    with pytest.warns(GradscopeWarning, match="internal failure"), pytest.raises(GradscopeError):
        w.last  # noqa: B018
    w.close()


def test_a_tensor_the_user_holds_is_never_reused(lenet, lenet_input) -> None:
    with gradscope.watch(lenet) as w:
        backward(lenet, lenet_input)
        held = w.last["fc1.weight"].after
        kept = held.clone()
        for _ in range(3):
            lenet.zero_grad()
            backward(lenet, lenet_input * 2)
    assert torch.equal(held, kept)


def test_buffers_of_dropped_passes_are_reused(lenet, lenet_input) -> None:
    with gradscope.watch(lenet, copy=True) as w:
        pointers = []
        for _ in range(3):
            lenet.zero_grad()
            backward(lenet, lenet_input)
            pointers.append(w.last["fc1.weight"]._after.data_ptr())  # not handed out
    assert pointers[0] == pointers[1] == pointers[2]
    torch.testing.assert_close(w.last["fc1.weight"].after, lenet.fc1.weight.grad)


def test_newest_tensors_are_released_at_the_next_forward_after_zero_grad(lenet, lenet_input):
    with gradscope.watch(lenet) as w:
        backward(lenet, lenet_input)
        record = w.last["fc1.weight"]
        lenet(lenet_input)  # .grad still holds them: kept
        assert record.after is not None
        lenet.zero_grad()
        lenet(lenet_input)  # only the watch would hold them now: released
        assert record.after is None and record.stats.norm > 0


def test_dropping_the_watch_removes_its_hooks(lenet, lenet_input) -> None:
    w = gradscope.watch(lenet)
    del w
    gc.collect()
    assert all(not p._backward_hooks for p in lenet.parameters())
    backward(lenet, lenet_input)
