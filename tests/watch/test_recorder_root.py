"""``Recorder.root``: the model the watch's forward checks hook, unwrapped from its wrappers."""

from __future__ import annotations

import torch
from torch import nn

import gradscope


def test_root_is_the_users_model_inside_a_wrapper_until_closed() -> None:
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    wrapped = nn.DataParallel(net)  # on a machine without GPUs it calls net itself
    with gradscope.watch(wrapped) as w:
        recorder = w._recorder
        assert recorder.root is net
        assert w._monitors.module_types == {
            "": "Sequential",
            "0": "Linear",
            "1": "Tanh",
            "2": "Linear",
        }  # read from the root, not the wrapper
        wrapped(torch.randn(5, 4)).sum().backward()
    assert recorder.root is None  # closed: the watch lets go of the model
