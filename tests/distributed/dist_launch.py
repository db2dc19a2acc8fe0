"""Run a worker script under ``torchrun`` in a subprocess, on a free port, with a timeout.

Each launch costs seconds (every process imports torch), so a worker runs many checks in one
launch and each rank writes what happened to each check into ``rank<r>.json``; the tests read
those. A hung collective ends in a timeout that kills the whole process group and fails the
test with the workers' output, instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    """A TCP port nobody listened on a moment ago (bound, read and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(
    script: Path, nproc: int, args: list[str], *, timeout: float = 240.0
) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node nproc script *args``, as a user types it; output captured."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        str(script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills every worker
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(
            f"torchrun {script.name} (nproc={nproc}) did not finish in {timeout:.0f} s "
            f"(a hung collective?); its output:\n{output[-6000:]}"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def run_checks(
    script: str, nproc: int, out: Path, *, timeout: float = 240.0
) -> list[dict[str, str]]:
    """Launch a worker that runs named checks; every rank's ``{check: "ok" | failure}``."""
    result = torchrun(HERE / script, nproc, [str(out)], timeout=timeout)
    ranks = []
    for rank in range(nproc):
        path = out / f"rank{rank}.json"
        if not path.exists():
            raise AssertionError(
                f"{script} rank {rank} wrote no results (exit code {result.returncode}); "
                f"output:\n{result.stdout[-6000:]}"
            )
        ranks.append(json.loads(path.read_text()))
    return ranks
