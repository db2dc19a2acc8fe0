"""The report's gradient-flow chart keeps layers without a gradient; sparklines share a scale;
NaN rows say what their statistics were taken over."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradscope
from gradscope._report.plots import NormSeries, flow_svg
from gradscope._report.series import layer_flow
from gradscope._report.sparkline import SparkScale, sparkline


class PartlyTrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.frozen = nn.Linear(8, 8).requires_grad_(False)
        self.unused = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(self.embed(x)))


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg[svg.index("<svg") :])
    return [t.text or "" for t in root.iter() if t.tag.endswith("text") and t.text]


def test_layers_without_a_gradient_keep_their_place_in_the_flow_chart() -> None:
    pytest.importorskip("matplotlib")
    net = PartlyTrained()
    with gradscope.watch(net) as w:
        net(torch.randn(3, 4)).sum().backward()
    order = [name for name, _ in net.named_parameters()]
    flows, _ = layer_flow(w.last, order)
    assert [(f.layer, f.missing) for f in flows] == [
        ("embed", ""),
        ("frozen", "frozen"),
        ("unused", "no gradient"),
        ("head", ""),
    ]
    for flow in flows:
        params = list(getattr(net, flow.layer).parameters())
        if flow.missing:
            assert flow.mean_abs is None and flow.max_abs is None
            assert all(p.grad is None for p in params)
            continue
        values = np.concatenate([p.grad.double().numpy().ravel() for p in params])
        assert flow.max_abs == pytest.approx(np.abs(values).max(), rel=1e-6)
    texts = svg_texts(flow_svg(flows, "pass 1"))
    for word in ("embed", "frozen", "unused", "head", "no gradient"):
        assert word in texts, f"{word!r} is not on the chart: {texts}"


def test_report_flow_chart_lists_missing_layers(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    net = PartlyTrained()
    with gradscope.watch(net) as w:
        net(torch.randn(3, 4)).sum().backward()
    page = w.report(tmp_path / "r.html").read_text()
    flow = page[page.index("<h2>Gradient flow</h2>") : page.index("<h2>Gradient norm over")]
    assert ">no gradient<" in flow and ">frozen<" in flow and ">unused<" in flow


def test_a_layer_missing_only_a_bias_still_has_its_bar() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    net[0].bias.requires_grad_(False)
    with gradscope.watch(net) as w:
        net(torch.randn(2, 3)).sum().backward()
    flows, _ = layer_flow(w.last, [n for n, _ in net.named_parameters()])
    assert [(f.layer, f.missing, f.max_abs is not None) for f in flows] == [
        ("0", "", True),
        ("1", "", True),
    ]


def _ys(svg: str) -> list[float]:
    points = re.search(r'<polyline points="([^"]+)"', svg)
    assert points is not None, svg
    return [float(p.split(",")[1]) for p in points.group(1).split()]


def test_sparklines_on_one_scale_compare_across_rows() -> None:
    small = NormSeries("small", (1, 2, 3), (0.01, 0.02, 0.01))
    large = NormSeries("large", (1, 2, 3), (1.0, 2.0, 1.0))
    scale = SparkScale.of([small, large])
    assert (scale.low, scale.high) == (-2, 1)  # whole powers of ten around 0.01 .. 2
    assert scale.caption == "log scale 1e-02 to 1e+01"
    # heights follow log10 on the shared scale (24 px tall, 2 px padding)
    for series in (small, large):
        expected = [
            24 - 2 - 20 * (math.log10(v) - scale.low) / (scale.high - scale.low)
            for v in series.norms
        ]
        assert _ys(sparkline(series, scale)) == pytest.approx(expected, abs=0.06)
    # the same shape a hundred times smaller sits lower, by two thirds of the height
    drop = np.array(_ys(sparkline(small, scale))) - np.array(_ys(sparkline(large, scale)))
    assert drop == pytest.approx([20 * 2 / 3] * 3, abs=0.1)
    # alone, each line spans its own range: identical pictures, which is why rows need a scale
    assert _ys(sparkline(small)) == _ys(sparkline(large))
    # one gridline per power of ten
    assert sparkline(small, scale).count('class="grid"') == 4


def test_report_sparklines_share_the_scale_named_in_the_header(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with gradscope.watch(net) as w:
        for _ in range(3):
            net.zero_grad()
            net(torch.randn(5, 4)).sum().backward()
    page = w.report(tmp_path / "r.html").read_text()
    norms = [r.stats.norm for rec in w.records for r in rec.values()]
    scale = SparkScale.of([NormSeries("all", (), tuple(norms))])
    assert scale.low == math.floor(math.log10(min(norms)))
    assert scale.high == math.ceil(math.log10(max(norms)))
    assert f'norm over passes<br><span class="scale">{scale.caption}</span>' in page
    assert page.count('class="grid"') == 4 * (scale.high - scale.low + 1)


def test_nan_rows_say_what_their_statistics_cover(tmp_path: Path) -> None:
    """A NaN gradient whose finite part is all zero showed 0.000e+00, next to rows showing "-"
    because they had no finite element: each row now says which it is."""
    partly = nn.Parameter(torch.ones(3))
    fully = nn.Parameter(torch.ones(2))
    net = nn.ParameterDict({"partly": partly, "fully": fully})
    nan = float("nan")
    with gradscope.watch(net) as w:
        loss = (partly * torch.tensor([nan, 0.0, 0.0])).sum() + (fully * nan).sum()
        loss.backward()
    rows = {row.name: row for row in w.summary().rows}
    assert partly.grad is not None and fully.grad is not None
    finite = partly.grad[torch.isfinite(partly.grad)].numpy()
    assert rows["partly"].mean == float(finite.mean()) == 0.0
    assert rows["partly"].abs_max == 0.0
    assert rows["partly"].note == "NON-FINITE; stats over the 2 finite of 3 elements"
    assert rows["fully"].mean is None and rows["fully"].note == "NON-FINITE; no finite element"
    text = str(w.summary())
    assert re.search(r"partly .*0\.000e\+00 .*stats over the 2 finite of 3 elements", text)
    assert re.search(r"fully .* - .*no finite element", text)
    page = w.report(tmp_path / "r.html").read_text()
    assert '<span class="flag">stats over the 2 finite of 3 elements</span>' in page
    assert '<span class="flag">no finite element</span>' in page
