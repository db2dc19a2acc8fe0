"""``gradscope demo``: PyTorch's "Neural Networks" tutorial on its LeNet, step by step, watched.

This is the command-line layer: it writes its narration to the stream it is given (the CLI
passes stdout) and progress to a :class:`Progress` (stderr, terminals only). The files it
leaves in the output folder are written into a staging folder first, then moved in place.
Step 6, the hand-written update, is in ``manual_step.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn, optim

from .._errors import GradscopeError
from .._files import staged_dir
from .._graph.build import graph
from .._graph.graph import Graph
from .._lenet import LeNet
from .._naming import named_parameters
from .._report.html import write_report
from .._watch.watch import Watch, watch
from .manual_step import manual_update
from .narrator import Narrator
from .node_words import chain, node_label
from .progress import Progress

__all__ = ["DEFAULT_STEPS", "FILES", "run_demo"]

DEFAULT_STEPS = 40
DIAGNOSIS_STEPS = 20  # section 8: enough optimizer steps for the step checks to speak
LEARNING_RATE = 0.01
REPORT, SUMMARY, GRAPH_STEM = "report.html", "summary.txt", "backward-graph"
# What the graph file shows, said the same way in step 5 and in the file list.
GRAPH_SHOWS = "each node coloured by the gradient norm that flowed through it"
# The files the demo leaves, with what each holds: the file list at the end and `--help`.
FILES = {
    GRAPH_STEM + ".svg": f"the backward graph of step 5, {GRAPH_SHOWS}",
    REPORT: (
        "open it in a browser: per-parameter table, gradient flow, norms over the passes, "
        "the last pass's backward graph"
    ),
    SUMMARY: "what the demo printed, then the last pass's table",
}


def _vector(tensor: torch.Tensor | None) -> str:
    if tensor is None:
        return "None"
    return "[" + ", ".join(f"{v:+.4f}" for v in tensor.tolist()) + "]"


def _train(
    net: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    progress: Progress,
) -> tuple[Watch, list[float], Graph]:
    criterion = nn.MSELoss()
    optimizer = optim.SGD(net.parameters(), lr=LEARNING_RATE)
    losses = []
    last_graph: Graph | None = None
    with watch(net) as w:
        for i in range(steps):
            optimizer.zero_grad()
            loss = criterion(net(inputs), target)
            if i == steps - 1:  # the report shows the graph of the pass its table shows
                last_graph = graph(loss, params=net, grads=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            progress.update(i + 1, steps, "training")
    progress.done()
    if last_graph is None:
        raise GradscopeError(f"the demo needs at least one training step, not {steps}")
    return w, losses, last_graph


def _save_graph(g: Graph, stage: Path) -> tuple[Path, str | None]:
    """backward-graph.svg; or the DOT source, and why, when no Graphviz renderer works here."""
    try:
        svg = g.to_svg()
    except GradscopeError as error:
        path = stage / (GRAPH_STEM + ".dot")
        path.write_text(g.to_dot(), encoding="utf-8")
        return path, str(error)
    path = stage / (GRAPH_STEM + ".svg")
    path.write_text(svg, encoding="utf-8")
    return path, None


def run_demo(
    out: Path,
    *,
    stream: TextIO,
    progress: Progress | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
) -> list[Path]:
    """Run the tutorial, narrate it to ``stream`` and write the pictures into ``out``."""
    progress = progress if progress is not None else Progress(enabled=False)
    with staged_dir(out) as stage:
        narrator = Narrator(stream)
        _steps(narrator, stage, progress, steps, seed, out)
        written = sorted(p.name for p in stage.iterdir())
    return [out / name for name in written]


def _steps(n: Narrator, stage: Path, progress: Progress, steps: int, seed: int, out: Path) -> None:
    torch.manual_seed(seed)
    say, code = n.say, n.raw
    net = LeNet()
    names = {id(p): name for name, p in named_parameters(net).params.items()}
    say(
        'gradscope demo: the "Neural Networks" part of PyTorch\'s 60-minute introduction, run '
        "on its LeNet (conv1, conv2, fc1, fc2, fc3) with gradscope watching every backward pass."
    )
    inputs = torch.randn(1, 1, 32, 32)

    n.step(1, "Zero the gradient buffers, then backpropagate random gradients")
    code("net.zero_grad()\nout = net(input)\nout.backward(torch.randn(1, 10))")
    with watch(net) as w:
        net.zero_grad()
        net(inputs).backward(torch.randn(1, 10))
    record = w.last
    say(
        f"gradscope.watch(net) recorded that pass: {len(record)} of "
        f"{len(record) + len(record.missing)} parameters received a gradient, "
        f"{len(record.nonfinite)} with NaN/Inf. The largest gradient norm is "
        f"{max(r.stats.norm for r in record.values()):.3g} "
        f"({max(record, key=lambda k: record[k].stats.norm)}).",
        2,
    )

    n.step(2, "A loss function: MSELoss against a random target")
    code(
        "output = net(input)\ntarget = torch.randn(10).view(1, -1)\n"
        "criterion = nn.MSELoss()\nloss = criterion(output, target)"
    )
    target = torch.randn(10).view(1, -1)
    criterion = nn.MSELoss()
    loss = criterion(net(inputs), target)
    say(f"print(loss)  ->  {loss!r}", 2)

    n.step(3, "The computation that produced the loss, read from loss.grad_fn")
    words, nodes = chain(loss, names)
    say(" -> ".join(words), 2)
    say(
        "Autograd's backward nodes behind it, from the input side: " + ", ".join(nodes) + ". "
        "The [layer] tags name the parameters each node reads.",
        2,
    )

    n.step(4, "Following the graph backwards by hand, as the tutorial does")
    g = graph(loss, params=net, grads=True)  # grads=True: records the next backward's gradients
    node: Any = loss.grad_fn
    paths = [
        "loss.grad_fn",
        "loss.grad_fn.next_functions[0][0]",
        "loss.grad_fn.next_functions[0][0].next_functions[0][0]",
    ]
    for i, path in enumerate(paths):
        if i:
            node = node.next_functions[0][0]
        n.raw(f"{path:<56} {node_label(node, names)}", 2)
    say(
        'The tutorial\'s comment calls that third node "ReLU", but torch prints AccumulateGrad: '
        "the leaf node that adds the incoming gradient into fc3.bias.grad. gradscope names the "
        "parameter behind every AccumulateGrad so this confusion does not happen:",
        2,
    )
    n.raw("g = gradscope.graph(loss, params=net, grads=True)\n[n.label for n in g.path(0, 0)]")
    n.raw(" -> ".join(node.label for node in g.path(0, 0)), 2)

    n.step(5, "conv1.bias.grad before and after backward")
    code("net.zero_grad()\nprint(net.conv1.bias.grad)\nloss.backward()\nprint(net.conv1.bias.grad)")
    bias = net.get_parameter("conv1.bias")
    with watch(net) as w:
        net.zero_grad()
        before = bias.grad
        loss.backward()
    grad = w.last["conv1.bias"]
    n.raw(f"before backward: {_vector(before)}", 2)
    n.raw(f"after backward:  {_vector(bias.grad)}", 2)
    graph_file, no_svg = _save_graph(g, stage)
    same = grad.after is not None and bias.grad is not None and torch.equal(grad.after, bias.grad)
    say(
        "The tutorial shows six zeros before; today zero_grad() sets .grad to None. The watch "
        f"recorded both sides itself: w.last['conv1.bias'].before is {_vector(grad.before)}, "
        f".after equals net.conv1.bias.grad: {same} (norm {grad.stats.norm:.4g}).",
        2,
    )
    flows = [n.grad_norm for n in g.nodes if n.grad_norm is not None]
    span = f" (from {min(flows):.2g} to {max(flows):.2g})" if flows else ""
    if no_svg is None:
        drawn = g.drawn_count()  # as the picture's title
        say(
            f"The graph from step 4 recorded that backward pass: {graph_file.name} draws its "
            f"{len(g)} nodes as {drawn} boxes (each AccumulateGrad folded into the op that uses "
            f"its parameter, which is named there, and views into their edges), "
            f"{GRAPH_SHOWS}{span}.",
            2,
        )
    else:
        say(
            f"The graph from step 4 recorded that backward pass; it is saved as DOT source in "
            f"{graph_file.name} because it could not be drawn here: {no_svg}",
            2,
        )

    manual_update(n, net, LEARNING_RATE)

    n.step(7, f"Training with torch.optim: SGD(lr={LEARNING_RATE}), {steps} steps")
    code(
        f"optimizer = optim.SGD(net.parameters(), lr={LEARNING_RATE})\n"
        "for step in range(...):\n    optimizer.zero_grad()\n    output = net(input)\n"
        "    loss = criterion(output, target)\n    loss.backward()\n    optimizer.step()"
    )
    w, losses, last_graph = _train(net, inputs, target, steps, progress)
    say(
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {steps} steps; gradscope recorded "
        f"{len(w.records)} backward passes.",
        2,
    )
    final = w.last
    bad = [r.index for r in w.records if r.nonfinite]
    say(
        "Every gradient stayed finite." if not bad else f"NaN/Inf gradients in passes {bad}",
        2,
    )
    _diagnosis_section(n, inputs, target, seed, progress)
    write_report(w, stage / REPORT, graph=last_graph)
    n.say()
    n.say(f"Files in {out}/:")
    listed = {graph_file.name: FILES[GRAPH_STEM + ".svg"], REPORT: FILES[REPORT]}
    if no_svg is not None:
        listed[graph_file.name] = "the backward graph of step 5 as DOT source (see step 5)"
    for name, what in listed.items():
        say(f"{name:<22} {what}", 2)
    # summary.txt holds the narration up to here: the line about itself goes to the stream only.
    narration = list(n.lines)
    say(f"{SUMMARY:<22} {FILES[SUMMARY]}", 2)
    summary = str(w.summary(final))
    (stage / SUMMARY).write_text("\n".join([*narration, "", summary, ""]), encoding="utf-8")


class CarelessLeNet(LeNet):
    """The tutorial's LeNet with a deliberate mistake: the convolutional features detached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1).detach()  # mistake 1: nothing before this line learns
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


def _diagnosis_section(
    n: Narrator,
    inputs: torch.Tensor,
    target: torch.Tensor,
    seed: int,
    progress: Progress,
) -> None:
    """Section 8: the same training with two deliberate mistakes, and w.diagnose() naming both."""
    high_lr = LEARNING_RATE * 100
    steps = DIAGNOSIS_STEPS
    n.step(8, "Why a model does not learn: w.diagnose() on two deliberate mistakes")
    n.raw(
        "def forward(self, x):            # in a copy of LeNet\n"
        "    ...\n"
        "    x = torch.flatten(x, 1).detach()    # mistake 1: cuts conv1 and conv2 off\n"
        "    ...\n"
        f"optimizer = optim.SGD(net.parameters(), lr={high_lr})   # mistake 2: 100x the lr\n"
        "with gradscope.watch(net, optimizer=optimizer) as w:\n"
        "    ...the same training loop...\n"
        "print(w.diagnose())"
    )
    torch.manual_seed(seed)
    net = CarelessLeNet()
    criterion = nn.MSELoss()
    optimizer = optim.SGD(net.parameters(), lr=high_lr)
    losses = []
    with watch(net, optimizer=optimizer) as w:
        for i in range(steps):
            optimizer.zero_grad()
            loss = criterion(net(inputs), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
            progress.update(i + 1, steps, "training with two mistakes")
    progress.done()
    diagnosis = w.diagnose()
    n.say(
        f"The loss still falls ({losses[0]:.4f} -> {losses[-1]:.4f}): nothing crashes, nothing "
        "warns. The diagnosis, read from what the watch recorded:",
        2,
    )
    n.raw(str(diagnosis), 2)
    kinds = [f.kind for f in diagnosis]
    n.say(
        "It names both mistakes: "
        + ("the cut path (no_gradient, at the detach() line)" if "no_gradient" in kinds else "")
        + (" and " if "no_gradient" in kinds and "update_ratio" in kinds else "")
        + ("the step size (update_ratio)" if "update_ratio" in kinds else "")
        + ". gradscope.testing.assert_healthy(w) fails a test with the same list; "
        "watch(net, on_problem='raise') stops the loop at the first error a pass can show.",
        2,
    )
