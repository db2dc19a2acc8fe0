"""The per-parameter table: one row per parameter, numbers from the record, fixed width."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from torch import nn

import gradscope


def test_table_rows_match_the_gradients() -> None:
    net = nn.ModuleDict({"used": nn.Linear(3, 2), "unused": nn.Linear(2, 2)})
    net["used"].bias.requires_grad_(False)
    with gradscope.watch(net) as w:
        net["used"](torch.randn(4, 3)).sum().backward()
    summary = w.summary()
    rows = {row.name: row for row in summary.rows}
    assert list(rows) == ["used.weight", "used.bias", "unused.weight", "unused.bias"]
    grad = net["used"].weight.grad.numpy()
    assert math.isclose(rows["used.weight"].norm, float(np.linalg.norm(grad)), rel_tol=1e-6)
    assert math.isclose(rows["used.weight"].std, float(np.std(grad)), rel_tol=1e-5)
    assert rows["used.bias"].note == "frozen" and rows["used.bias"].norm is None
    assert rows["unused.weight"].note == "no gradient"
    lines = str(summary).splitlines()
    assert lines[0] == "gradscope: backward pass 1, 4 parameters"
    header, rule = lines[1], lines[2]
    assert header.split()[:3] == ["parameter", "shape", "norm"]
    assert len(rule.rstrip()) >= len(header.rstrip()) - len("note")  # columns line up
    assert any(re.match(r"used\.weight\s+2x3\s", line) for line in lines)


def test_nonfinite_gradients_are_flagged() -> None:
    net = nn.Linear(2, 1)
    with gradscope.watch(net) as w:
        (net(torch.tensor([[1.0, float("inf")]])) * 0).sum().backward()
    row = {r.name: r for r in w.summary().rows}["weight"]
    assert row.nan == 1 and "NON-FINITE" in row.note
    assert "NON-FINITE" in str(w.summary())
