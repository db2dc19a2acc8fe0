"""The ``gradscope`` command line: ``gradscope demo`` and ``gradscope graph``.

Only this layer writes to stdout/stderr. Errors print one line, ``gradscope CMD: error: ...``,
and exit 1 (2 for a malformed command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._demo import DEFAULT_STEPS, run_demo
from ._errors import GradscopeError
from ._progress import Progress

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line instead of a usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    import torch

    from . import __version__

    return f"gradscope {__version__} (torch {torch.__version__})"


def _cmd_demo(args: argparse.Namespace) -> int:

    if args.steps < 1:
        raise GradscopeError(f"--steps {args.steps}: pass a positive number of training steps")
    run_demo(Path(args.out), stream=sys.stdout, progress=Progress(sys.stderr), steps=args.steps)
    return 0


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback when something fails",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradscope",
        description="See what your gradients are doing in PyTorch.",
        epilog="Start with `gradscope demo`; `gradscope COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=_version())
    _add_debug(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="run PyTorch's LeNet tutorial step by step and write a report",
        description=(
            "Runs the 'Neural Networks' part of PyTorch's 60-minute introduction on its LeNet, "
            "explaining what each step shows about the gradients, then writes report.html and "
            "summary.txt into --out."
        ),
    )
    demo.add_argument(
        "--out",
        default="gradscope-demo",
        metavar="DIR",
        help="folder for the files (default: gradscope-demo)",
    )
    demo.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"training steps at the end (default: {DEFAULT_STEPS})",
    )
    _add_debug(demo, argparse.SUPPRESS)
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: demo")
    prog = f"gradscope {args.command}"
    try:
        status: int = args.run(args)
    except GradscopeError as error:
        if args.debug:
            raise
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        text = " ".join(str(error).split())
        print(
            f"{prog}: error: unexpected {type(error).__name__}: {text} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return status
