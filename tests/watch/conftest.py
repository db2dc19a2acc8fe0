"""The two ways a pass's statistics reach the host, so every watch test runs through both.

On a CPU they are read when the pass ends; on a CUDA device they are computed on the device and
copied asynchronously, to be read later. ``CopyLater`` is that second path on the CPU: a host
copy behind a fake event, so the deferred read is tested on every machine, not only on a GPU.
"""

from __future__ import annotations

import pytest
from read_paths import CopyLater

import gradscope._watch.forward_pass as forward_module
import gradscope._watch.recorder as recorder_module


@pytest.fixture(params=["read-now", "read-later"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with statistics read when the pass ends, then with the deferred read."""
    if request.param == "read-later":
        monkeypatch.setattr(recorder_module, "host_copy_for", lambda device: CopyLater())
        # the diagnosis's forward sums travel the same way
        monkeypatch.setattr(forward_module, "host_copy_for", lambda device: CopyLater())
    return str(request.param)
