"""Dead-unit streaks against a plain-Python count, as the parameters change between passes.

Which parameters are 1-D is decided again only when the parameter set (or a shape) changes:
these passes change the set, a parameter's shape in place, and drop a parameter, and the
streaks must follow each change exactly as a pass-by-pass look at every parameter would.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from gradscope._watch.records import BackwardRecord, GradRecord
from gradscope._watch.signals import PassSignals


def _record(names: list[str]) -> BackwardRecord:
    grads = {n: GradRecord.from_pass(n, 1, torch.Size(), slot) for slot, n in enumerate(names)}
    return BackwardRecord(1, grads, [], [])


class Oracle:
    """Consecutive zero-gradient passes per element of every 1-D parameter, in lists."""

    def __init__(self) -> None:
        self.layout: list[tuple[str, int]] = []
        self.streak: dict[str, list[int]] = {}

    def on_pass(self, names: list[str], params: dict[str, torch.Tensor]) -> None:
        ones = [
            n for n in names if n in params and params[n].dim() == 1 and params[n].grad is not None
        ]
        layout = [(n, params[n].numel()) for n in ones]
        if not layout:
            return
        if layout != self.layout:
            self.layout = layout
            self.streak = {n: [0] * size for n, size in layout}
        for n in ones:
            values = cast(torch.Tensor, params[n].grad).tolist()
            self.streak[n] = [
                (s + 1) if v == 0 else 0 for s, v in zip(self.streak[n], values, strict=True)
            ]


def test_streaks_follow_changes_of_the_parameter_set_and_shapes() -> None:
    gen = torch.Generator().manual_seed(0)

    def param(*shape: int) -> nn.Parameter:
        p = nn.Parameter(torch.zeros(shape))
        p.grad = torch.zeros(shape)
        return p

    params: dict[str, torch.Tensor] = {"a": param(3), "w": param(2, 2), "b": param(4)}
    names = ["a", "w", "b"]
    signals, oracle = PassSignals(), Oracle()

    def step() -> None:
        for p in params.values():
            assert p.grad is not None
            # about half the elements exactly zero, the rest not
            mask = torch.rand(p.grad.shape, generator=gen) < 0.5
            p.grad = torch.where(mask, 0.0, torch.randn(p.grad.shape, generator=gen))
        signals.on_pass(_record(names), params)
        oracle.on_pass(names, params)
        assert signals.streaks() == oracle.streak

    for _ in range(4):
        step()
    params["b"] = param(4, 1)  # the same name, a new 2-D parameter: no longer a unit vector
    for _ in range(3):
        step()
    w = params["w"]
    w.data = torch.zeros(5)  # in place: the same object turns 1-D
    w.grad = torch.zeros(5)
    for _ in range(3):
        step()
    del params["a"]  # a name the record has but the parameters no longer do
    for _ in range(3):
        step()
    assert set(signals.streaks()) == {"w"}
    assert signals.streak_passes == 3
    # the dims seen stay (1, 2) but now belong to another name: "a" is back, "w" is gone
    params["a"] = param(5)
    del params["w"]
    for _ in range(2):
        step()
    assert set(signals.streaks()) == {"a"}
