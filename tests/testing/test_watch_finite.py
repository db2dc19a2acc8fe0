"""assert_watch_finite on records whose gradients were changed in place after the pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradscope
import gradscope.testing as gt
from gradscope import GradientAssertionError


@pytest.mark.parametrize("then", ["clip", "unscale"])
def test_a_nonfinite_pass_changed_in_place_after_is_still_reported(then: str) -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gradscope.watch(net, scaler=scaler) as w:
        loss = net(torch.randn(2, 3)).sum() * torch.tensor(math.inf)
        scaler.scale(loss).backward()
        if then == "clip":
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        else:
            scaler.unscale_(optimizer)
    assert w.last["0.weight"].modified
    with pytest.raises(GradientAssertionError, match=r"non-finite from backward pass 1 on"):
        gt.assert_watch_finite(w)
