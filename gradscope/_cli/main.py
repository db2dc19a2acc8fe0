"""The ``gradscope`` command line: ``gradscope demo`` and ``gradscope graph TARGET``.

Only this layer writes to stdout/stderr. Errors print one line, ``gradscope CMD: error: ...``,
and exit 1 (2 for a malformed command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .._errors import GradscopeError
from .demo import DEFAULT_STEPS, FILES, run_demo
from .progress import Progress
from .target import DTYPES as DTYPE_NAMES
from .target import INPUT_DTYPES as INPUT_DTYPE_NAMES
from .target import LOSSES

if TYPE_CHECKING:
    import torch

    from .._graph.graph import Graph

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line instead of a usage block plus a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    import torch

    from .._version import __version__

    return f"gradscope {__version__} (torch {torch.__version__})"


def _cmd_demo(args: argparse.Namespace) -> int:

    if args.steps < 1:
        raise GradscopeError(f"--steps {args.steps}: pass a positive number of training steps")
    run_demo(Path(args.out), stream=sys.stdout, progress=Progress(sys.stderr), steps=args.steps)
    return 0


_GRAPH_FORMATS = (".svg", ".png", ".dot", ".gv")


def _shape(text: str) -> tuple[int, ...]:
    from .target import parse_shape

    try:
        return parse_shape(text)
    except GradscopeError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"--input {text!r} ")) from None


def _cmd_graph(args: argparse.Namespace) -> int:
    from .._files import atomic_write
    from .._graph.build import graph
    from .._graph.module_tags import install_module_tagging
    from .target import DTYPES, build_model, check_memory, make_inputs, to_loss, vocab_of

    out = Path(args.output)
    if out.suffix.lower() not in _GRAPH_FORMATS:
        raise GradscopeError(
            f"-o {str(out)!r}: name the file .svg, .png, .dot or .gv (the suffix picks the format)"
        )
    if not out.absolute().parent.is_dir():
        raise GradscopeError(f"-o {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    if args.depth is not None and args.depth < 1:
        raise GradscopeError(f"--depth {args.depth}: pass 1 or more (1 = top-level submodules)")
    if not args.input:
        raise GradscopeError(
            "--input is required: the shape of each input the model's forward takes, "
            "e.g. --input 1,1,32,32"
        )
    if args.radius < 0:
        raise GradscopeError(f"--radius {args.radius}: pass 0 or more (edges around --focus)")
    if args.focus == "nan" and not args.grads:
        raise GradscopeError("--focus nan needs --grads (the NaN/Inf origin of a backward pass)")
    model = build_model(args.target)
    dtype = DTYPES[args.dtype]
    model.to(dtype)
    kinds = _input_dtypes(args, dtype)
    vocab = args.vocab if args.vocab is not None else vocab_of(model)
    check_memory(args.input, kinds)
    inputs = make_inputs(args.input, kinds, vocab=vocab)
    # note which module runs each op, so every op lands in its module's cluster
    handles = install_module_tagging(model)
    try:
        loss = to_loss(model, inputs, args.loss)
    finally:
        for handle in handles:
            handle.remove()
    g = graph(loss, params=model, grads=args.grads)
    if args.grads:
        loss.backward()  # type: ignore[no-untyped-call]
    whole = len(g)
    focus = ""
    if args.focus is not None:
        g, focus = _focused(g, args.focus, args.radius)
    progress = Progress(sys.stderr)
    notes: tuple[str, ...] = ()
    if out.suffix.lower() in (".dot", ".gv"):
        data: str | bytes = g.to_dot(depth=args.depth)
    else:
        progress.note(f"laying out {len(g)} backward nodes with Graphviz...")
        drawn = g.render_result(out.suffix[1:].lower(), depth=args.depth)
        data, notes = drawn.data, drawn.notes
    atomic_write(out, data)
    extra = ", gradient norms on the edges" if args.grads else ""
    if not focus:  # say what the picture holds, not only what was walked: its title's count
        boxes = g.drawn_count(depth=args.depth)
        how = "" if args.depth is None else f": modules collapsed at depth {args.depth}"
        extra = f" ({boxes} drawn{how})" + extra
    print(f"wrote {out}: backward graph of {type(model).__name__}, {whole} nodes{focus}{extra}")
    for note in notes:
        print(f"  note: {note}")
    origin = g.first_nonfinite if args.grads else None
    if origin is not None:
        print(f"  first non-finite gradient: {origin}")
    return 0


def _input_dtypes(args: argparse.Namespace, dtype: torch.dtype) -> list[torch.dtype]:
    """One dtype per --input: --input-dtype once for all, once per input, or --dtype."""
    from .target import INPUT_DTYPES

    given = args.input_dtype or []
    if len(given) > 1 and len(given) != len(args.input):
        raise GradscopeError(
            f"--input-dtype was given {len(given)} times for {len(args.input)} --input shapes: "
            "give it once (for every input) or once per --input, in the same order"
        )
    if not given:
        return [dtype] * len(args.input)
    if len(given) == 1:
        given = given * len(args.input)
    return [INPUT_DTYPES[name] for name in given]


def _vocab(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of token ids")
    return value


def _focused(g: Graph, focus: str, radius: int) -> tuple[Graph, str]:
    """``--focus``: the part of ``g`` around a module, or around the NaN/Inf origin."""
    if focus == "nan":
        origin = g.first_nonfinite
        if origin is None:
            raise GradscopeError(
                "--focus nan: the backward pass had no NaN/Inf gradient; drop --focus"
            )
        part = g.around(origin, radius=radius)
        return part, f" (drawn: {len(part)} around {origin.node.label})"
    part = g.around(focus, radius=radius)
    return part, f" (drawn: {len(part)} around module {focus!r})"


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
        description=textwrap.fill(
            "Runs the 'Neural Networks' part of PyTorch's 60-minute introduction on its LeNet, "
            "explaining what each step shows about the gradients, then writes these files into "
            "--out:",
            78,
        )
        + "".join(
            "\n"
            + textwrap.fill(what, 78, initial_indent=f"  {name:<19} ", subsequent_indent=" " * 22)
            for name, what in FILES.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    draw = commands.add_parser(
        "graph",
        help="draw any model's backward graph",
        description=(
            "Builds the model that TARGET's factory returns, runs it on random inputs, reduces "
            "the output to a loss and draws the backward graph behind it, parameters named."
        ),
        epilog="example: gradscope graph gradscope:LeNet --input 1,1,32,32 --grads -o lenet.svg",
    )
    draw.add_argument(
        "target",
        metavar="TARGET",
        help="package.module:factory or path/to/file.py:factory; factory() returns an nn.Module",
    )
    draw.add_argument(
        "-o",
        "--output",
        default="backward-graph.svg",
        metavar="FILE",
        help="output file, .svg, .png, .dot or .gv (default: backward-graph.svg)",
    )
    draw.add_argument(
        "--input",
        action="append",
        type=_shape,
        metavar="SHAPE",
        help="shape of one input, e.g. 1,1,32,32 (or 1x1x32x32); repeat for several inputs",
    )
    draw.add_argument(
        "--dtype",
        choices=sorted(DTYPE_NAMES),
        default="float32",
        help="dtype of the inputs and the model (default: float32)",
    )
    draw.add_argument(
        "--input-dtype",
        action="append",
        choices=sorted(INPUT_DTYPE_NAMES),
        metavar="DTYPE",
        help="dtype of the inputs (default: --dtype): once for all inputs or once per --input; "
        "int64/int32 give token ids for embedding models",
    )
    draw.add_argument(
        "--vocab",
        type=_vocab,
        default=None,
        metavar="N",
        help="integer inputs are drawn from 0 to N-1 (default: the smallest nn.Embedding size "
        "in the model)",
    )
    draw.add_argument(
        "--loss",
        choices=LOSSES,
        default="sum",
        help="how the output becomes a loss: sum, mean, or mse against a random "
        "target (default: sum)",
    )
    draw.add_argument(
        "--grads",
        action="store_true",
        help="run backward and show the gradient norm through every node",
    )
    draw.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="N",
        help="collapse each module at depth N into one node (1 = top-level)",
    )
    draw.add_argument(
        "--focus",
        metavar="MODULE",
        default=None,
        help="draw only the part around one module (e.g. layers.3.self_attn), or around the "
        "first NaN/Inf gradient with --focus nan (needs --grads)",
    )
    draw.add_argument(
        "--radius",
        type=int,
        default=2,
        metavar="K",
        help="with --focus: how many edges around it to draw (default: 2)",
    )
    _add_debug(draw, argparse.SUPPRESS)
    draw.set_defaults(run=_cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: demo, graph")
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
