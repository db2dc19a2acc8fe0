"""watch() options: tied-weight patterns, and bad input that gets a clear error, not a raw one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeError, UnknownParameterError


class TiedLM(nn.Module):
    """GPT-2's tying: the output projection is the token embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(11, 4)
        self.h = nn.Linear(4, 4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm_head(self.h(self.wte(tokens)))
        return out


def test_patterns_match_any_alias_of_a_tied_parameter() -> None:
    net = TiedLM()
    with gradscope.watch(net, include="lm_head.*") as w:
        net(torch.tensor([1, 2])).sum().backward()
    assert set(w.last) == {"wte.weight"}
    assert w.last["lm_head.weight"] is w.last["wte.weight"]
    torch.testing.assert_close(w.last["lm_head.weight"].after, net.wte.weight.grad)
    with gradscope.watch(net, exclude="lm_head.*") as w:
        net(torch.tensor([1, 2])).sum().backward()
    assert set(w.last) == {"h.weight", "h.bias"}
    with pytest.raises(UnknownParameterError):
        w.last["lm_head.weight"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"include": 5}, r"include= takes a glob pattern .* not int 5"),
        ({"include": [None]}, r"include= entries must be glob patterns \(str\), got NoneType"),
        ({"exclude": torch.zeros(2)}, r"exclude= takes a glob pattern .* not a tensor"),
        ({"history": True}, r"history=True: pass a positive int"),
        ({"history": 0}, r"history=0: pass a positive int"),
        ({"every": 2.0}, r"every=2.0: pass a positive int"),
        ({"copy": "yes"}, r"copy= takes True or False, not str 'yes'"),
        ({"tag_modules": None}, r"tag_modules= takes True or False, not NoneType None"),
        ({"keep": ["all"]}, r"keep=\['all'\] is not one of"),
        ({"max_bytes": -1}, r"max_bytes=-1: pass a positive int"),
        ({"scaler": 1.0}, r"scaler= takes a torch.amp.GradScaler, not float 1.0"),
    ],
)
def test_bad_options_are_refused_with_what_was_passed(
    options: dict[str, object], message: str
) -> None:
    net = nn.Linear(2, 2)
    with pytest.raises(GradscopeError, match=message):
        gradscope.watch(net, **options)  # type: ignore[arg-type]
    assert not net._forward_pre_hooks and all(not p._backward_hooks for p in net.parameters())


def test_looking_up_a_record_by_position_or_summarising_a_name_is_explained() -> None:
    net = nn.Linear(2, 2)
    with gradscope.watch(net) as w:
        net(torch.ones(1, 2)).sum().backward()
    with pytest.raises(UnknownParameterError, match=r"by parameter name \(a str\), not by int 0"):
        w.last[0]  # type: ignore[index]
    assert 0 not in w.last  # a Mapping: membership of a non-name is just False
    with pytest.raises(
        GradscopeError, match=r"summary\(\) takes a BackwardRecord.*w.history\('x'\)"
    ):
        w.summary("x")  # type: ignore[arg-type]
    assert "weight" in str(w.summary(w.records[0]))


def test_repr_of_a_watch_whose_construction_failed() -> None:
    with pytest.raises(GradscopeError):
        gradscope.Watch(nn.Linear(2, 2), copy="yes")  # type: ignore[arg-type]
    half = gradscope.Watch.__new__(gradscope.Watch)
    assert repr(half) == "<gradscope.Watch (not started)>"


def test_a_meta_device_model_is_refused_up_front() -> None:
    with torch.device("meta"):
        net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    with pytest.raises(
        GradscopeError, match=r"watch\(\): 4 of 4 parameters are on the meta device"
    ):
        gradscope.watch(net)
    assert not net._forward_pre_hooks
