"""Gradient assertions for unit tests, in the style of chex: ``import gradscope.testing as gt``.

Every function raises :class:`gradscope.GradientAssertionError` (an ``AssertionError``) whose
message lists every offending parameter at once (name, shape, what is wrong, the worst value and
its index, how many elements) and ends with one ``Hint:`` line. Each takes ``msg=`` (shown first)
and hides its own frames from pytest tracebacks. Parameters are named as
``module.named_parameters()`` names them; ``ignore=`` takes names or glob patterns.

>>> import torch, gradscope, gradscope.testing as gt
>>> net = gradscope.LeNet()
>>> net(torch.randn(2, 1, 32, 32)).sum().backward()
>>> gt.assert_grads_finite(net)
>>> gt.assert_all_params_have_grad(net)
>>> gt.assert_grad_norms(net, min=1e-8, max=1e4)
"""

from __future__ import annotations

from ._close import assert_grads_close
from ._gradcheck import assert_gradcheck
from ._grads import (
    assert_all_params_have_grad,
    assert_grad_norms,
    assert_grads_finite,
    assert_no_grad,
)
from ._replicas import assert_replicas_in_sync
from ._step import assert_step_matches_reference
from ._update import assert_params_updated
from ._watch import assert_watch_finite

__all__ = [
    "assert_all_params_have_grad",
    "assert_grad_norms",
    "assert_gradcheck",
    "assert_grads_close",
    "assert_grads_finite",
    "assert_no_grad",
    "assert_params_updated",
    "assert_replicas_in_sync",
    "assert_step_matches_reference",
    "assert_watch_finite",
]
