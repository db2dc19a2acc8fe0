"""examples/lenet.py prints the tutorial's next_functions walk and writes the backward graph."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SCRIPT = Path(__file__).with_name("lenet.py")


def test_lenet_example_walks_the_graph_and_writes_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "MseLossBackward0 -> AddmmBackward0 -> AccumulateGrad[fc3.bias]" in done.stdout
    svg = tmp_path / "lenet_backward.svg"
    if svg.exists():
        root = ET.parse(svg).getroot()
        text = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
        assert "MseLossBackward0" in text and "fc3.bias" in text and "|g|" in text
    else:  # no renderer on this machine: the DOT file instead
        assert (tmp_path / "lenet_backward.dot").read_text().startswith("digraph")
