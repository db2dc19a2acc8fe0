"""Graph benchmark: walk + DOT + render per model, next to torchviz; tagging and grads=True cost.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_graph.py  (torchviz column only when
torchviz is installed in the same environment; it is never a gradscope dependency).
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from graph_models import ResidualMLP, Reused, transformer

import gradscope
from gradscope._graph.module_tags import install_module_tagging
from gradscope._graph.render import find_renderers

TORCHVIZ_CAP_S = 60


def _cases() -> dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]]:
    return {
        "LeNet": lambda: (gradscope.LeNet(), torch.randn(1, 1, 32, 32)),
        "TransformerEncoder x12": lambda: (transformer(12), torch.randn(2, 10, 32)),
        "residual MLP chain": lambda: (ResidualMLP(1667), torch.randn(2, 4)),
        "parameter reused 100x": lambda: (Reused(100), torch.randn(2, 8)),
    }


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


TORCHVIZ = """
import sys, time, torch
sys.path.insert(0, {tests!r})
import graph_models, gradscope
from torchviz import make_dot
torch.manual_seed(0)
net, x = {make}
out = net(x).sum()
t = time.perf_counter()
try:
    dot = make_dot(out, params=dict(net.named_parameters()))
except RecursionError:
    print("RecursionError"); raise SystemExit
t1 = time.perf_counter()
dot.pipe(format="svg")
print(f"{{t1 - t:.3f}} {{time.perf_counter() - t1:.3f}}")
"""

MAKES = {
    "LeNet": "gradscope.LeNet(), torch.randn(1, 1, 32, 32)",
    "TransformerEncoder x12": "graph_models.transformer(12), torch.randn(2, 10, 32)",
    "residual MLP chain": "graph_models.ResidualMLP(1667), torch.randn(2, 4)",
    "parameter reused 100x": "graph_models.Reused(100), torch.randn(2, 8)",
}


def _torchviz(name: str) -> str:
    try:
        import torchviz  # noqa: F401
    except ImportError:
        return "not installed"
    renderers = find_renderers()
    if not renderers:
        return "no renderer"
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if renderers[0].name != "dot":  # torchviz runs `dot` by name: give it graphviz-pure
            Path(tmp, "dot").symlink_to(renderers[0].path)
            env["PATH"] = tmp + os.pathsep + env.get("PATH", "")
        code = TORCHVIZ.format(tests=str(Path(__file__).parent.parent / "tests"), make=MAKES[name])
        try:
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=TORCHVIZ_CAP_S,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"> {TORCHVIZ_CAP_S} s (killed)"
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:40]
    if "RecursionError" in done.stdout:
        return "RecursionError"
    build, rend = (float(v) for v in done.stdout.split())
    return f"{build:.3f} + {rend:.2f} s"


def rendering_table() -> None:
    print("## walk + DOT + render to SVG (walk, DOT: ms, median of 3; render: s, once)")
    print(
        "| graph | nodes | drawn | walk ms | DOT ms | render s | total s | torchviz make_dot+dot |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, make in _cases().items():
        torch.manual_seed(0)
        net, x = make()
        install_module_tagging(net)
        out = net(x).sum()
        walk_s, g = _time(lambda: gradscope.graph(out, params=net), 3)  # noqa: B023
        assert isinstance(g, gradscope.Graph)
        dot_s, dot = _time(g.to_dot, 3)
        drawn = sum(
            1
            for line in str(dot).splitlines()
            if line.lstrip().startswith("n") and "->" not in line
        )
        render_s, _ = _time(lambda: g.to_svg(timeout=60), 1)  # noqa: B023
        total = walk_s + dot_s + render_s
        print(
            f"| {name} | {len(g.nodes)} | {drawn} | {walk_s * 1e3:.1f} | {dot_s * 1e3:.1f} "
            f"| {render_s:.2f} "
            f"| {total:.2f} | {_torchviz(name)} |"
        )


def _bare_walk(root: torch.Tensor) -> int:
    """The floor: an iterative next_functions walk that only names each node."""
    seen: dict[int, object] = {}
    names = []
    stack = [root.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen[id(fn)] = fn
        names.append(fn.name())
        stack.extend(child for child, _ in fn.next_functions)
    return len(names)


def _chain(n: int) -> torch.Tensor:
    z = torch.randn(2, requires_grad=True)
    for _ in range(n):
        z = z * 1.0001
    return z


def walk_50k() -> None:
    print("\n## 50,000-node chain: gradscope.graph() / a bare next_functions walk (interleaved)")
    times: dict[str, list[float]] = {"bare": [], "graph": []}

    def bare(z: torch.Tensor) -> None:
        gc.disable()  # as graph() does: the cyclic collector would sweep the walk's objects
        try:
            _bare_walk(z)
        finally:
            gc.enable()

    # each walk gets a fresh chain: the first look at a node creates its Python wrapper, which
    # both pay; a second graph() of the same loss would find its nodes already held (cheaper)
    for k in range(9):
        order = [("bare", bare), ("graph", gradscope.graph)]
        for name, fn in order if k % 2 else order[::-1]:
            z = _chain(50_000)
            t = time.perf_counter()
            fn(z)
            times[name].append(time.perf_counter() - t)
            if name == "bare":  # a chain this long, once seen from Python, frees recursively
                gradscope.graph(z)  # and overflows the C stack: let gradscope's holder free it
            del z
    ratios = [g / b for g, b in zip(times["graph"], times["bare"], strict=True)]
    print(
        f"bare {statistics.median(times['bare']):.3f} s, graph() "
        f"{statistics.median(times['graph']):.3f} s: median ratio {statistics.median(ratios):.2f}x"
        " (target <= 3x)"
    )


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def tagging_overhead() -> None:
    print("\n## module tagging: forward+backward, tagged / untagged (interleaved medians)")
    cases = [
        ("LeNet", lambda: (gradscope.LeNet(), torch.randn(8, 1, 32, 32)), 60),
        ("TransformerEncoder x12", lambda: (transformer(12), torch.randn(4, 16, 32)), 20),
    ]
    for name, make, rounds in cases:
        torch.manual_seed(0)
        plain, x = make()
        tagged, _ = make()
        tagged.load_state_dict(plain.state_dict())
        install_module_tagging(tagged)
        _tagging_case(name, plain, tagged, x, rounds)


def _tagging_case(name: str, plain: nn.Module, tagged: nn.Module, x: torch.Tensor, n: int) -> None:
    med = _interleaved(
        {
            "plain": lambda: plain(x).sum().backward(),
            "tagged": lambda: tagged(x).sum().backward(),
        },
        n,
    )
    print(
        f"{name}: {med['plain'] * 1e3:.2f} ms -> {med['tagged'] * 1e3:.2f} ms, "
        f"ratio {med['tagged'] / med['plain']:.2f}x"
    )


def grads_overhead() -> None:
    print("\n## grads=True (NaN origin) per training step vs plain and vs detect_anomaly")
    cases = [
        ("LeNet", lambda: (gradscope.LeNet(), torch.randn(8, 1, 32, 32)), 80),
        ("MLP 4x1024", lambda: (_mlp(), torch.randn(32, 1024)), 40),
        ("TransformerEncoder x12", lambda: (transformer(12), torch.randn(4, 16, 32)), 40),
    ]
    for name, make, rounds in cases:
        torch.manual_seed(0)
        net, x = make()
        _grads_case(name, net, x, rounds)


def _grads_case(name: str, net: nn.Module, x: torch.Tensor, rounds: int) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)

    def plain() -> None:
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()

    def grads(saved: bool) -> None:
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        g = gradscope.graph(loss, grads=True, saved=saved)
        loss.backward()
        assert g.first_nonfinite is None
        opt.step()

    def anomaly() -> None:
        opt.zero_grad()
        with torch.autograd.detect_anomaly(check_nan=True):
            net(x).pow(2).mean().backward()
        opt.step()

    med = _interleaved(
        {
            "plain": plain,
            "grads": lambda: grads(True),
            "lean": lambda: grads(False),
            "anomaly": anomaly,
        },
        rounds,
    )
    base = med["plain"]
    print(
        f"{name}: plain {base * 1e3:.2f} ms; grads=True {med['grads'] / base:.2f}x; "
        f"grads=True, saved=False {med['lean'] / base:.2f}x; "
        f"detect_anomaly {med['anomaly'] / base:.2f}x"
    )


def layout_choice() -> None:
    print("\n## full layouts: estimated dot time and what was chosen (render once each)")
    print("| graph | drawn nodes | long-edge segments | estimated dot s | engine | render s |")
    print("|---|---|---|---|---|---|")
    from gradscope._graph.layout import estimate

    cases = [
        ("TransformerEncoder x12, full", lambda: (transformer(12), torch.randn(2, 10, 32)), True),
        ("residual MLP 400 blocks, full", lambda: (ResidualMLP(400), torch.randn(2, 4)), True),
        ("residual MLP 1000 blocks, full", lambda: (ResidualMLP(1000), torch.randn(2, 4)), True),
        ("Linear reused 100x, unfolded", lambda: (Reused(100), torch.randn(2, 8)), False),
    ]
    for name, make, fold in cases:
        torch.manual_seed(0)
        net, x = make()
        g = gradscope.graph(net(x).sum(), params=net)
        dot = g._dot(None, 10**6, fold)
        guess = estimate(dot.drawn, dot.lines)
        t = time.perf_counter()
        result = g.render_result(max_nodes=10**6, fold=fold, timeout=120)
        took = time.perf_counter() - t
        print(
            f"| {name} | {guess.nodes} | {guess.segments} | {guess.seconds:.1f} "
            f"| {result.engine} | {took:.2f} |"
        )


def _mlp() -> nn.Module:
    return nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(1024, 1024), nn.ReLU())])


def main() -> None:
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*anomaly.*")
    print(f"torch {torch.__version__}, renderer: {[r.name for r in find_renderers()]}")
    rendering_table()
    walk_50k()
    layout_choice()
    tagging_overhead()
    grads_overhead()


if __name__ == "__main__":
    main()
