"""The two torchrun examples, launched exactly as the README tells users to."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from dist_launch import ROOT, torchrun

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")


def test_fsdp_example_records_the_whole_gradient_on_every_rank() -> None:
    done = torchrun(ROOT / "examples" / "fsdp_watch.py", 2, [], timeout=180)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "4 passes recorded on each of 2 ranks" in done.stdout, done.stdout[-4000:]
    assert done.stdout.count("(clip_grad_norm_ says") == 4


def test_ddp_example_says_which_passes_synchronised() -> None:
    done = torchrun(ROOT / "examples" / "ddp_watch.py", 2, [], timeout=180)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "6 passes recorded, 3 synchronised" in done.stdout, done.stdout[-4000:]
    assert "pass 1: synchronised=False" in done.stdout
    assert "pass 2: synchronised=True" in done.stdout
