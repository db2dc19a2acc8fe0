"""What a person sees: every edge visible, any name drawable."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

import gradscope

SVG = "{http://www.w3.org/2000/svg}"
needs_renderer = pytest.mark.skipif(
    not gradscope._graph.render.find_renderers(), reason="no Graphviz renderer installed"
)


def _contrast_with_white(color: str) -> float:
    """WCAG 2 contrast ratio of ``#rrggbb`` (or black/none) against white."""
    named = {"black": "#000000"}
    color = named.get(color, color)
    channels = []
    for k in (1, 3, 5):
        c = int(color[k : k + 2], 16) / 255
        channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
    luminance = 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]
    return 1.05 / (luminance + 0.05)


def test_contrast_oracle_matches_known_values() -> None:
    assert _contrast_with_white("#000000") == pytest.approx(21.0)
    assert _contrast_with_white("#767676") == pytest.approx(4.54, abs=0.01)  # WCAG's AA grey


class _DeadBranch(nn.Module):
    """A LeNet-sized net plus a branch whose gradient is exactly zero (relu of negatives)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = gradscope.LeNet()
        self.dead = nn.Linear(10, 10)
        with torch.no_grad():
            self.dead.weight.zero_()
            self.dead.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        return h + torch.relu(self.dead(h))


@needs_renderer
def test_every_edge_colour_contrasts_3_to_1_with_white() -> None:
    net = _DeadBranch()
    loss = net(torch.randn(2, 1, 32, 32)).pow(2).mean()
    g = gradscope.graph(loss, params=net, grads=True)
    loss.backward()
    norms = [e.grad_norm for e in g.edges if e.grad_norm is not None]
    assert 0.0 in norms and max(norms) / min(n for n in norms if n > 0) > 100  # a wide range
    root = ET.fromstring(g.to_svg())
    edges = [e for e in root.iter(SVG + "g") if e.get("class") == "edge"]
    assert len(edges) >= 15
    colours = set()
    for edge in edges:
        for shape in (*edge.iter(SVG + "path"), *edge.iter(SVG + "polygon")):
            for attr in ("stroke", "fill"):
                value = shape.get(attr)
                if value and value != "none":
                    colours.add(value)
    assert len(colours) >= 3  # the scale is really used
    worst = min(colours, key=_contrast_with_white)
    assert _contrast_with_white(worst) >= 3.0, worst


@pytest.mark.parametrize("bad", ["w\x00x", "w\ud800x", 'w"\\x\x1b', "w\udcffx\n"])
def test_names_with_nul_or_lone_surrogates_never_break_a_render(bad: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = nn.Sequential(nn.Linear(3, 3))
    net.register_parameter(bad, nn.Parameter(torch.randn(3)))
    with gradscope.watch(net) as w:
        loss = (net(torch.randn(2, 3)) * getattr(net, bad)).sum()
        g = w.graph(loss)
        loss.backward()
    dot = g.to_dot()
    assert "\x00" not in dot and dot.encode("utf-8")  # encodable: no lone surrogate left
    assert "w\\\\x00x" in dot or "\\\\ud" in dot or "\\\\x1b" in dot  # shown, not dropped
    if gradscope._graph.render.find_renderers():
        svg = g.to_svg()
        text = " ".join(t.text or "" for t in ET.fromstring(svg).iter(SVG + "text"))
        assert "\\x00" in text or "\\ud" in text or "\\x1b" in text
    pytest.importorskip("matplotlib")
    page = w.report(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "\x00" not in page
