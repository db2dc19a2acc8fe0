"""Python work per training step under watch(), counted, not timed: the same on a loaded machine.

Runs a few training steps of each model under ``sys.settrace`` with opcode events and prints
how many Python bytecodes (and Python function calls) one step executes in gradscope's code
and in torch's (the module-hook path runs in ``torch.nn.Module``), next to the same step
without gradscope. On small models (LeNet) this Python is most of the watch's cost; timings
on a shared machine move by more than the differences worth chasing, these counts do not.

    python benchmarks/count_watch.py [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_watch import MODELS, make_step

import gradscope

CONFIGS: dict[str, dict[str, Any] | None] = {
    "baseline": None,
    "watch()": {},
    "check_forward=False": {"check_forward": False},
    'keep="none"': {"keep": "none"},
    "tag_modules=False": {"tag_modules": False},
}


def _where(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    if "gradscope" in path:
        return "gradscope"
    return "torch" if "torch" in path else "other"


def count(step: Callable[[], None], steps: int) -> Counter[str]:
    """Bytecodes and calls per step, by where the code lives."""
    counts: Counter[str] = Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        where = _where(frame)
        counts[where + " calls"] += 1
        frame.f_trace_opcodes = True

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[where] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        for _ in range(steps):
            step()
    finally:
        sys.settrace(None)
    return Counter({k: v // steps for k, v in counts.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<28} {'config':<18} {'gradscope':>10} {'torch':>8} {'calls':>7}")
    for label, factory in MODELS.items():
        for name, options in CONFIGS.items():
            torch.manual_seed(0)
            net, x = factory()
            watch = gradscope.watch(net, **options) if options is not None else None
            step = make_step(net, x)
            for _ in range(3):
                step()
            counts = count(step, args.steps)
            if watch is not None:
                watch.close()
            calls = sum(v for k, v in counts.items() if k.endswith(" calls"))
            print(
                f"{label:<28} {name:<18} {counts['gradscope']:>10} {counts['torch']:>8} {calls:>7}"
            )


if __name__ == "__main__":
    main()
