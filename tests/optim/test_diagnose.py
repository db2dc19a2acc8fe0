"""The mistake guesses: how the actual update relates to the reference update."""

from __future__ import annotations

import torch

from gradscope._optim.diagnose import guess as _guess


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


class _AdamWithWrongLr(torch.optim.Adam):
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for group in self.param_groups:
            group["lr"] *= 1.1
        loss = super().step(closure)
        for group in self.param_groups:
            group["lr"] /= 1.1
        return loss


def test_ill_conditioned_adam_update_passes_and_a_wrong_lr_is_still_caught() -> None:
    # With L2 weight decay, grad + wd * p cancels to about Adam's eps for some elements of
    # LeNet's fc1.weight; the update there depends on how torch rounds g (found by a user test).
    import gradscope

    for optimizer_class, should_pass in ((torch.optim.Adam, True), (_AdamWithWrongLr, False)):
        torch.manual_seed(0)
        net = gradscope.LeNet()
        x = torch.randn(1, 1, 32, 32)
        optimizer = optimizer_class(net.parameters(), lr=1e-3, weight_decay=0.01)
        net(x).pow(2).mean().backward()
        with gradscope.check_step(optimizer, params=net) as report:
            optimizer.step()
        assert report.ok is should_pass, str(report)
        if not should_pass:
            assert len(report.failures) == 10  # every parameter, each off by 10% of its update
