"""install_module_tagging: each autograd node carries the path of the innermost module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from graph_models import transformer
from torch import nn

import gradscope
from gradscope._graph.module_tags import install_module_tagging, module_path_of


def _tags(out: torch.Tensor) -> dict[str, set[str | None]]:
    """op name -> module paths seen, by a plain next_functions traversal (the oracle)."""
    found: dict[str, set[str | None]] = {}
    seen: set[int] = set()
    keep: list[Any] = []
    stack = [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        keep.append(fn)
        found.setdefault(fn.name(), set()).add(module_path_of(fn))
        stack.extend(c for c, _ in fn.next_functions)
    return found


def test_lenet_nodes_carry_their_module() -> None:
    net = gradscope.LeNet()
    handles = install_module_tagging(net)
    tags = _tags(net(torch.randn(1, 1, 32, 32)))
    assert tags["ConvolutionBackward0"] == {"conv1", "conv2"}
    assert tags["AddmmBackward0"] == {"fc1", "fc2", "fc3"}
    assert tags["ReluBackward0"] == {""}  # F.relu runs in LeNet.forward itself
    assert tags["torch::autograd::AccumulateGrad"] == {None}
    for h in handles:
        h.remove()
    assert _tags(net(torch.randn(1, 1, 32, 32)))["AddmmBackward0"] == {None}


def test_innermost_module_wins_in_a_transformer() -> None:
    net = transformer(2)
    install_module_tagging(net)
    out = net(torch.randn(2, 5, 32))
    g = gradscope.graph(out.sum(), params=net)
    names = {name for name, _ in net.named_modules()}
    ops = [n for n in g.nodes if n.kind == "op" and n.op != "SumBackward0"]
    assert all(n.module in names and n.module_source == "forward" for n in ops)
    lin1 = {n.module for n in ops if n.op == "AddmmBackward0"}
    assert {"layers.0.linear1", "layers.0.linear2", "layers.1.linear1"} <= lin1
    norms = {n.module for n in ops if n.op == "NativeLayerNormBackward0"}
    assert norms == {"layers.0.norm1", "layers.0.norm2", "layers.1.norm1", "layers.1.norm2"}


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        h = self.act(self.lin(x))
        return {"h": h, "pair": (h * 2, None), "n": 3, "idx": h.argmax()}


def test_dict_tuple_none_and_inplace_outputs() -> None:
    net = Odd()
    install_module_tagging(net)
    out = net(torch.randn(2, 3))
    tags = _tags(out["pair"][0])
    assert tags["MulBackward0"] == {""}
    assert tags["ReluBackward0"] == {"act"}  # in-place ReLU rebased the tensor in module act
    assert tags["AddmmBackward0"] == {"lin"}


def test_no_grad_and_exceptions_leave_no_state_behind() -> None:
    from gradscope._graph.module_tags import _CALLS

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    net = nn.Sequential(nn.Linear(2, 2), Boom())
    install_module_tagging(net)
    with torch.no_grad():
        net[0](torch.randn(1, 2))
    with pytest.raises(ValueError, match="boom"):
        net(torch.randn(1, 2))
    assert _CALLS.stack == [] and _CALLS.done == []
    out = net[0](torch.randn(1, 2))  # called on its own: it is the outermost call
    assert module_path_of(out.grad_fn) == "0"


def test_graph_falls_back_to_parameter_hints_without_tagging() -> None:
    net = gradscope.LeNet()
    g = gradscope.graph(net(torch.randn(1, 1, 32, 32)).sum(), params=net)
    addmm = [n for n in g.nodes if n.op == "AddmmBackward0"]
    assert {n.module for n in addmm} == {"fc1", "fc2", "fc3"}
    assert {n.module_source for n in addmm} == {"parameters"}
    assert all(n.module is None for n in g.nodes if n.op == "ReluBackward0")


def test_tagged_deep_model_frees_without_crashing() -> None:
    code = textwrap.dedent(
        """
        import gc, torch
        from torch import nn
        from gradscope._graph.module_tags import install_module_tagging, module_path_of
        class Deep(nn.Module):
            def forward(self, x):
                for _ in range(60_000):
                    x = x * 1.0001
                return x
        net = nn.Sequential(Deep())
        install_module_tagging(net)
        out = net(torch.randn(2, requires_grad=True))
        assert module_path_of(out.grad_fn) == "0"
        del out
        gc.collect()
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_graph_under_watch_shows_module_paths() -> None:
    net = gradscope.LeNet()
    with gradscope.watch(net):
        loss = net(torch.randn(1, 1, 32, 32)).sum()
        g = gradscope.graph(loss, params=net)
        loss.backward()
    convs = {n.module for n in g.nodes if n.op == "ConvolutionBackward0"}
    assert convs == {"conv1", "conv2"}
    assert {n.module_source for n in g.nodes if n.op == "ReluBackward0"} == {"forward"}


@pytest.mark.skipif(
    not gradscope._graph.render.find_renderers(), reason="no Graphviz renderer installed"
)
def test_watch_graph_keeps_the_graph_with_module_names_and_clusters() -> None:
    import xml.etree.ElementTree as ET

    net = gradscope.LeNet()
    with gradscope.watch(net) as w:
        loss = net(torch.randn(1, 1, 32, 32)).sum()
        g = w.graph(loss)
        loss.backward()
    assert w.last_graph is g
    assert {n.module for n in g.nodes if n.op == "AddmmBackward0"} == {"fc1", "fc2", "fc3"}
    assert all(n.grad_norm is not None for n in g.nodes if n.op == "AddmmBackward0")
    svg = ET.fromstring(g.to_svg())
    texts = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
    assert "fc2: AddmmBackward0" in texts  # a module without submodules: named on its op
    block = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), nn.Linear(3, 1))
    with gradscope.watch(block) as w:
        loss = block(torch.randn(2, 3)).sum()
        g = w.graph(loss)
        loss.backward()
    svg = ET.fromstring(g.to_svg())
    titles = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")}
    assert any(t and t.startswith("cluster") for t in titles), titles  # "0" has submodules


def test_module_paths_of_an_older_forward_fall_back_cleanly() -> None:
    from gradscope._graph.module_tags import HISTORY

    net = nn.Sequential(nn.Linear(2, 2))
    handles = install_module_tagging(net)
    first = net(torch.randn(1, 2, requires_grad=True))
    assert module_path_of(first.grad_fn) == "0"
    for _ in range(HISTORY):
        net(torch.randn(1, 2))
    assert module_path_of(first.grad_fn) is None  # forgotten, not misattributed
    latest = net(torch.randn(1, 2, requires_grad=True))
    assert module_path_of(latest.grad_fn) == "0"  # the bisect index stayed in step
    for handle in handles:
        handle.remove()
