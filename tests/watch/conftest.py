"""The two ways a pass's statistics reach the host, so every watch test runs through both.

On a CPU they are read when the pass ends; on a CUDA device they are computed on the device and
copied asynchronously, to be read later. ``CopyLater`` is that second path on the CPU: a host
copy behind a fake event, so the deferred read is tested on every machine, not only on a GPU.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch.distributed as dist
from read_paths import CopyLater

import gradscope._watch.ending as ending_module
import gradscope._watch.forward_pass as forward_module


@pytest.fixture(params=["read-now", "read-later"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with statistics read when the pass ends, then with the deferred read."""
    if request.param == "read-later":
        monkeypatch.setattr(ending_module, "host_copy_for", lambda device: CopyLater())
        # the diagnosis's forward sums travel the same way
        monkeypatch.setattr(forward_module, "host_copy_for", lambda device: CopyLater())
    return str(request.param)


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A gloo process group of one rank in this process, for DDP and FSDP2 without torchrun."""
    if dist.is_initialized():  # pragma: no cover - another test left one: use it
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
