"""examples/lenet.py runs as a script and shows the tutorial's gradients through gradscope."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("lenet.py")


def test_lenet_example_prints_the_gradients_and_the_summary(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "MseLossBackward0" in out
    assert "before: None" in out
    after = re.search(r"after:\s+tensor\(\[([^\]]+)\]\)", out)
    assert after is not None and len(after.group(1).split(",")) == 6  # conv1.bias has 6 values
    table = out[out.index("gradscope: backward pass") :]
    for name in ("conv1.weight", "conv1.bias", "fc3.bias"):
        assert re.search(rf"^{re.escape(name)}\s", table, re.MULTILINE), name
