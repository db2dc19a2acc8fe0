"""examples/optimizer_check.py runs as a script and shows one passing and one failing check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("optimizer_check.py")


def test_example_passes_then_names_the_missing_parameters() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    passing, failing = done.stdout.split("2. the same")
    assert "update rule (parameters and optimizer state): ok" in passing
    assert "FAIL" not in passing
    assert "caught StepMismatch" in failing and "2 of 10 parameters FAILED" in failing
    assert "fc3.weight (in no param group)" in failing
    assert "fc3.bias (in no param group)" in failing
