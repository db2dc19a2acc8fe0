"""Graphs of real models a person can read: every op in its module, collapse leaves no op
outside, around() is the hand-walked neighbourhood, and slow layouts are never run silently."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from graph_models import ResBlock, Reused, transformer
from torch import nn
from torch.overrides import TorchFunctionMode

import gradscope


class _WhoMadeIt(TorchFunctionMode):
    """The oracle: which module was running when each autograd node was created.

    Its own forward hooks keep a stack of module paths; every torch function call is seen
    here (a mode is off inside its own call, so each top-level call once), and every node the
    call created is found by walking back from the call's outputs to nodes seen before. Keyed
    by sequence number; holds the nodes so that ids stay unique while it runs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.owner: dict[int, str] = {}  # sequence number -> module path
        self._known: set[int] = set()
        self._keep: list[Any] = []
        self._handles = []
        for path, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(path)))
            self._handles.append(module.register_forward_hook(self._leave, always_call=True))

    def _enter(self, path: str) -> Any:
        def pre(module: nn.Module, args: Any) -> None:
            self.stack.append(path)

        return pre

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.stack.pop()

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if self.stack:
            todo = [t.grad_fn for t in _flat(out) if isinstance(t, torch.Tensor)]
            while todo:
                fn = todo.pop()
                if fn is None or id(fn) in self._known or "AccumulateGrad" in fn.name():
                    continue
                self._known.add(id(fn))
                self._keep.append(fn)
                self.owner[fn._sequence_nr()] = self.stack[-1]
                todo.extend(c for c, _ in fn.next_functions)
        return out


def _flat(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [x for item in out for x in _flat(item)]
    if isinstance(out, dict):
        return [x for item in out.values() for x in _flat(item)]
    return [out]


def _gpt2() -> tuple[nn.Module, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=100,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 100, (2, 8))


MODELS = {
    "transformer": lambda: (transformer(2), torch.randn(2, 5, 32)),
    "resblock": lambda: (nn.Sequential(ResBlock(), ResBlock()), torch.randn(2, 8, 6, 6)),
    "gpt2": _gpt2,
}


@pytest.mark.parametrize("which", list(MODELS))
def test_every_op_executed_in_a_module_lands_in_its_cluster(which: str) -> None:
    net, x = MODELS[which]()
    mode = _WhoMadeIt(net)
    handles = gradscope._graph.module_tags.install_module_tagging(net)
    with mode:
        out = net(x)
    mode.close()
    for h in handles:
        h.remove()
    tensors = [t for t in _flat(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    g = gradscope.graph(*tensors, params=net)
    ops = [n for n in g.nodes if n.kind == "op" and n.seq in mode.owner]
    assert len(ops) > 10 and len(ops) == sum(n.kind == "op" for n in g.nodes)
    wrong = [(n.op, n.module, mode.owner[n.seq]) for n in ops if n.module != mode.owner[n.seq]]
    assert wrong == []
    if which == "transformer":  # attention internals inside self_attn, not the layer
        attn = {n.module for n in ops if "Attention" in n.op or n.op == "MmBackward0"}
        assert attn and all(m.endswith("self_attn") for m in attn if m)


@pytest.mark.parametrize("which", list(MODELS))
def test_graph_of_a_model_tags_modules_itself(which: str) -> None:
    net, x = MODELS[which]()
    g = gradscope.graph(net, x)  # no watch: graph() runs the forward and notes modules
    names = {name for name, _ in net.named_modules()}
    ops = [n for n in g.nodes if n.kind == "op"]
    assert ops and all(n.module in names and n.module_source == "forward" for n in ops)
    assert any(n.module and n.module.count(".") >= 1 for n in ops)  # deep modules, not hints


@pytest.mark.parametrize("which", list(MODELS))
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_collapse_leaves_no_op_outside_its_module(which: str, depth: int) -> None:
    net, x = MODELS[which]()
    g = gradscope.graph(net, x)
    modules_at = {name for name, _ in net.named_modules() if name and name.count(".") + 1 == depth}
    inside = {
        m: sum(
            1
            for n in g.nodes
            if n.kind == "op" and n.module and (n.module == m or n.module.startswith(m + "."))
        )
        for m in modules_at
    }
    c = g.collapse(depth)
    left_out = [
        (n.op, n.module)
        for n in c.nodes
        if n.kind == "op"
        and n.module
        and any(n.module == m or n.module.startswith(m + ".") for m in modules_at)
    ]
    assert left_out == []
    collapsed = {n.module: n.ops for n in c.nodes if n.kind == "module"}
    assert {m: k for m, k in inside.items() if k} == collapsed
    # nothing loops back: an edge leaves a collapsed module only towards the parameters side
    assert all(e.src != e.dst for e in c.edges)


def _hand_neighbourhood(out: torch.Tensor, start_seq: int, radius: int) -> list[str]:
    """Op names (sorted) within ``radius`` undirected edges of the node numbered
    ``start_seq``, by a plain next_functions walk: the oracle for around()."""
    near: dict[int, set[int]] = {}
    fns: dict[int, Any] = {}
    stack, seen = [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        fns[id(fn)] = fn
        for child, _ in fn.next_functions:
            if child is not None:
                near.setdefault(id(fn), set()).add(id(child))
                near.setdefault(id(child), set()).add(id(fn))
                stack.append(child)
    (start,) = [k for k, f in fns.items() if f._sequence_nr() == start_seq]
    keep, frontier = {start}, [start]
    for _ in range(radius):
        frontier = [j for i in frontier for j in near.get(i, ()) if j not in keep]
        keep.update(frontier)
    names = sorted(fns[k].name().removeprefix("torch::autograd::") for k in keep)
    fns.clear()
    return names


@pytest.mark.parametrize("radius", [0, 1, 3])
def test_around_a_node_is_the_hand_walked_neighbourhood(radius: int) -> None:
    net = transformer(2)
    out = net(torch.randn(2, 5, 32)).sum()
    g = gradscope.graph(out, params=net)
    centre = next(n for n in g.nodes if n.op == "NativeLayerNormBackward0")
    part = g.around(centre, radius=radius)
    assert sorted(n.op for n in part.nodes) == _hand_neighbourhood(out, centre.seq, radius)  # type: ignore[arg-type]
    assert all(e.src in {n.id for n in part.nodes} for e in part.edges)
    assert f"within {radius} edges of NativeLayerNormBackward0" in part.to_dot()


def test_around_a_module_and_the_nan_origin() -> None:
    net = transformer(3)
    g = gradscope.graph(net, torch.randn(2, 5, 32))
    part = g.around("layers.1.self_attn", radius=1)
    mine = {n.id for n in g.nodes if (n.module or "").startswith("layers.1.self_attn")}
    assert mine <= {n.id for n in part.nodes} and len(part) < len(g) / 2
    with pytest.raises(gradscope.GradscopeError, match=r"no node ran in that module.*layers\.0"):
        g.around("layers.9")
    with pytest.raises(gradscope.GradscopeError, match="radius"):
        g.around("layers.1", radius=-1)
    x = torch.tensor([-1.0, 4.0], requires_grad=True)
    loss = (x.sqrt() * 2).sum()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    origin = g.first_nonfinite
    assert origin is not None
    near = g.around(origin, radius=1)
    assert near.first_nonfinite is not None and near.first_nonfinite.node.id == origin.node.id
    assert origin.node.op == "SqrtBackward0"
    assert {n.op for n in near.nodes} == {"SqrtBackward0", "MulBackward0", "AccumulateGrad"}


needs_renderer = pytest.mark.skipif(
    not gradscope._graph.render.find_renderers(), reason="no Graphviz renderer installed"
)


@needs_renderer
def test_a_layout_dot_cannot_do_in_seconds_goes_to_sfdp_and_says_so() -> None:
    net = Reused(100)  # unfolded: the weight feeds ops 1 to 100 layers away
    g = gradscope.graph(net(torch.randn(2, 8)).sum(), params=net)
    result = g.render_result(fold=False)
    assert result.engine == "sfdp"
    assert any("laid out with sfdp instead" in note for note in result.notes)
    assert b"laid out with sfdp instead" in result.data
    folded = g.render_result()  # the default folds the weight into its ops: fine for dot
    assert folded.engine == "dot" and folded.notes == ()
    with pytest.raises(gradscope.GradscopeError, match="engine="):
        g.render_result(engine="neato")


def test_layout_estimate_counts_layers_skipped_by_long_edges() -> None:
    from gradscope._graph.layout import estimate

    chain = estimate(range(4), [(0, 1), (1, 2), (2, 3)])
    assert (chain.nodes, chain.segments) == (4, 0)
    skip = estimate(range(4), [(0, 1), (1, 2), (2, 3), (0, 3)])
    assert skip.segments == 2  # 0 -> 3 passes layers 1 and 2
    assert skip.seconds > chain.seconds


def test_a_box_that_edges_cross_hundreds_of_times_is_dissolved() -> None:
    from graph_models import ResidualMLP

    net = ResidualMLP(60)  # blocks.k are called from the parent, between its own ops
    g = gradscope.graph(net(torch.randn(2, 4)).sum(), params=net)
    dot = g.to_dot()
    assert 'id="cluster-blocks"' not in dot  # dot would need minutes for that box
    assert 'label="blocks.7: AddmmBackward0' in dot  # the module stays on the node
    block = nn.Sequential(ResBlock(), ResBlock())  # boxes edges enter and leave once stay
    shown = gradscope.graph(block, torch.randn(2, 8, 6, 6)).to_dot()
    assert 'id="cluster-0"' in shown and 'id="cluster-1"' in shown
