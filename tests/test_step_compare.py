"""The mistake guesses: how the actual update relates to the reference update."""

from __future__ import annotations

import torch

from gradscope._step_compare import _guess


def test_guesses_name_the_likely_mistake() -> None:
    e = torch.tensor([1.0, -2.0, 0.5])
    assert "twice as far" in _guess(2 * e, e, 0.1, 0)
    assert "sign flip" in _guess(-e, e, 0.1, 0)
    assert "did the step skip it" in _guess(0 * e, e, 0.1, 0)
    assert "as if lr were 0.3 instead of 0.1" in _guess(3 * e, e, 0.1, 2)
    assert "param group 2" in _guess(3 * e, e, 0.1, 2)
    assert "not a multiple" in _guess(torch.tensor([1.0, 2.0, 0.5]), e, 0.1, 0)
    assert "NaN/Inf" in _guess(torch.tensor([1.0, float("nan"), 0.5]), e, 0.1, 0)
    assert "where the reference does not move it" in _guess(e, 0 * e, 0.1, 0)
