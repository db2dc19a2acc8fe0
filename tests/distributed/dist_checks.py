"""What a worker script uses: a process group, named checks, results written per rank."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

Check = Callable[[], None]


def main(checks: dict[str, Check]) -> None:
    """Run every check on every rank (in order: they may hold collectives) and write results.

    A failing check on one rank must not desynchronise the others: each check ends with a
    barrier, so a check that raised before its collectives would hang there and the launcher's
    timeout reports it; checks keep their collectives before anything that may fail.
    """
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
        dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown (seconds on this machine); results are written
