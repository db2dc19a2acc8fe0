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
    failing, forgetful = failing.split("3. a hand-written")
    assert "update rule (parameters and optimizer state): ok" in passing
    assert "FAIL" not in passing
    assert "caught StepMismatch" in failing and "2 of 10 parameters FAILED" in failing
    assert "fc3.weight (in no param group)" in failing
    assert "fc3.bias (in no param group)" in failing
    assert "3 steps, 2 failed" in forgetful and "step 1 of ForgetfulMomentumSGD" in forgetful
    assert "momentum_buffer of 10 parameters was not updated" in forgetful
    assert "it still equals the value from step 0" in forgetful
