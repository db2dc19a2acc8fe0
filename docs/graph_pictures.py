"""Draw the README's three backward graphs: ResNet-18, a 12-layer TransformerEncoder, GPT-2.

Run from the repository root: ``.venv/bin/python docs/graph_pictures.py`` (needs Graphviz,
chromium to turn SVG into PNG, and transformers). Each picture is one training step's backward
pass recorded with ``w.graph(loss)``: colours and edge widths are gradient norms.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from graph_models import ResNet18, gpt2, transformer  # noqa: E402

import gradscope  # noqa: E402


def _png(svg: str, out: Path) -> None:
    """Screenshot the SVG at its natural size in headless chromium."""
    size = re.search(r'width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    assert size is not None, "an SVG from Graphviz states its size in pt"
    width, height = (float(v) for v in size.groups())
    px_w, px_h = int(width * 4 / 3) + 2, int(height * 4 / 3) + 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is needed to turn the SVG into PNG")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp, "page.html")
        Path(tmp, "g.svg").write_text(svg)
        page.write_text(
            '<html><body style="margin:0;background:#fff"><img src="g.svg"></body></html>'
        )
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--screenshot={out}",
                f"--window-size={px_w},{px_h}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def _step(net: nn.Module, x: torch.Tensor, lm: bool = False) -> gradscope.Graph:
    with gradscope.watch(net) as w:
        out = net(x)
        if lm:
            logits = out.logits
            target = torch.randint(0, logits.shape[-1], logits.shape[:-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
        else:
            loss = nn.functional.mse_loss(out, torch.randn_like(out))
        g = w.graph(loss)
        loss.backward()
    return g


def main() -> None:
    torch.manual_seed(0)
    docs = ROOT / "docs"
    resnet = _step(ResNet18(), torch.randn(2, 3, 64, 64))
    _png(resnet.to_svg(depth=2), docs / "graph-resnet18.png")
    encoder = _step(transformer(12, 64), torch.randn(2, 16, 64))
    _png(encoder.around("layers.11", radius=1).to_svg(), docs / "graph-transformer-layer.png")
    lm = _step(gpt2(2), torch.randint(0, 500, (2, 16)), lm=True)
    _png(lm.to_svg(depth=3), docs / "graph-gpt2.png")
    for name in ("graph-resnet18.png", "graph-transformer-layer.png", "graph-gpt2.png"):
        print(docs / name, (docs / name).stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
