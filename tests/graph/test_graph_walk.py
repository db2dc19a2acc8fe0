"""The walk: same nodes and edges as a plain next_functions traversal, and safe to free."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from graph_models import ResBlock, ResidualMLP, Reused, TiedLM, oracle, transformer
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradscope


def _ops(g: gradscope.Graph) -> set[str]:
    return {n.op for n in g.nodes}


@pytest.mark.parametrize(
    "make",
    [
        lambda: (gradscope.LeNet(), torch.randn(1, 1, 32, 32)),
        lambda: (transformer(12), torch.randn(2, 6, 32)),
        lambda: (ResBlock(), torch.randn(2, 8, 6, 6)),
        lambda: (TiedLM(), torch.randint(0, 50, (2, 5))),
        lambda: (Reused(100), torch.randn(2, 8)),
        lambda: (ResidualMLP(2000), torch.randn(2, 4)),
    ],
    ids=["lenet", "transformer12", "resblock", "tied", "reused100", "residual10k"],
)
def test_walk_matches_next_functions_oracle(make: object) -> None:
    net, x = make()  # type: ignore[operator]
    out = net(x).sum()
    g = gradscope.graph(out, params=net)
    names, n_nodes, n_edges = oracle(out)
    assert len(g.nodes) == n_nodes
    assert len(g.edges) == n_edges
    assert _ops(g) == names
    assert sorted(n.id for n in g.nodes) == list(range(n_nodes))  # each node once
    # every parameter that gets a gradient appears once, by its canonical name
    leaves = sorted(n.param for n in g.nodes if n.kind == "parameter")
    expected = sorted(name for name, p in net.named_parameters() if p.requires_grad)
    assert leaves == expected


def test_transformer_has_real_size() -> None:
    net = transformer(12)
    g = gradscope.graph(net(torch.randn(2, 6, 32)).sum(), params=net)
    assert 500 < len(g.nodes) < 1500


def test_tied_weight_is_one_leaf_with_two_consumers() -> None:
    net = TiedLM()
    g = gradscope.graph(net(torch.randint(0, 50, (2, 5))).sum(), params=net)
    (tied,) = [n for n in g.nodes if n.param == "embed.weight"]
    assert sum(e.dst == tied.id for e in g.edges) == 2
    assert not any(n.param == "head.weight" for n in g.nodes)


def test_parameter_reused_100_times_has_100_consumers() -> None:
    net = Reused(100)
    g = gradscope.graph(net(torch.randn(2, 8)).sum(), params=net)
    (bias,) = [n for n in g.nodes if n.param == "lin.bias"]
    assert sum(e.dst == bias.id for e in g.edges) == 100


def test_edge_slots_follow_next_functions() -> None:
    net = gradscope.LeNet()
    loss = nn.MSELoss()(net(torch.randn(1, 1, 32, 32)), torch.randn(1, 10))
    g = gradscope.graph(loss, params=net)
    fn = loss.grad_fn
    assert fn is not None
    for node in g.path(0, 0)[1:]:
        fn = fn.next_functions[0][0]
        assert node.op == fn.name().removeprefix("torch::autograd::")
    assert [n.label for n in g.path(0, 0)] == [
        "MseLossBackward0",
        "AddmmBackward0",
        "AccumulateGrad[fc3.bias]",
    ]
    assert [n.label for n in g.path(0, 2, 0)][-1] == "AccumulateGrad[fc3.weight]"


def test_saved_tensors_match_the_nodes_own_saved_attributes() -> None:
    lin = nn.Linear(400, 120)
    x = torch.randn(3, 400, requires_grad=True)  # so the weight is saved for x's gradient
    out = torch.relu(lin(x)).sum()
    g = gradscope.graph(out, params=lin)
    relu = next(n for n in g.nodes if n.op == "ReluBackward0")
    (result,) = relu.saved
    oracle_t = out.grad_fn.next_functions[0][0]._saved_result  # type: ignore[union-attr]
    assert result.shape == tuple(oracle_t.shape) == (3, 120)
    assert result.nbytes == oracle_t.numel() * 4
    assert result.dtype == "float32" and not result.is_parameter
    addmm = next(n for n in g.nodes if n.op == "AddmmBackward0")
    by_name = {s.name: s for s in addmm.saved}
    assert by_name["mat1"].shape == (3, 400) and not by_name["mat1"].is_parameter
    assert by_name["mat2"].is_parameter  # the weight (transposed view) is not an activation
    assert addmm.saved_bytes == 3 * 400 * 4


def test_leaf_that_requires_grad_is_a_one_node_graph() -> None:
    p = nn.Parameter(torch.randn(3))
    g = gradscope.graph(p, params={"p": p})
    assert [(n.kind, n.param, n.shape) for n in g.nodes] == [("parameter", "p", (3,))]
    assert g.edges == ()
    x = torch.randn(2, requires_grad=True)
    assert gradscope.graph(x).nodes[0].kind == "leaf"


def test_several_outputs_share_nodes() -> None:
    x = torch.randn(3, requires_grad=True)
    h = x.exp()
    a, b = h.sum(), h.mean()
    g = gradscope.graph(a, b)
    assert oracle(a, b)[1:] == (len(g.nodes), len(g.edges)) == (4, 3)
    assert [n.op for n in g.roots] == ["SumBackward0", "MeanBackward0"]


def test_graph_holds_no_autograd_node() -> None:
    import gc
    import weakref

    x = torch.randn(3, requires_grad=True)
    y = x.exp()
    out = (y * 2).sum()
    g = gradscope.graph(out)
    ref = weakref.ref(y)
    del y, out
    gc.collect()
    assert ref() is None  # the walk kept no tensor alive
    assert len(g.nodes) == 4


CHAIN = textwrap.dedent(
    """
    import gc, sys, torch, gradscope
    x = torch.randn(2, requires_grad=True)
    z = x
    keep = None
    for i in range(100_000):
        z = z * 1.0001
        if i == {mid}:
            keep = z
    g = gradscope.graph(z, grads={grads})
    assert len(g.nodes) == 100_001, len(g.nodes)
    del z
    gc.collect()
    del keep
    gc.collect()
    print("freed", len(g.nodes))
    """
)


@pytest.mark.parametrize(("mid", "grads"), [(-1, False), (99_990, False), (50_000, True)])
def test_100k_chain_walks_and_frees_without_crashing(mid: int, grads: bool) -> None:
    # in a subprocess: before the safe-free holder this segfaulted at about 45,000 nodes
    code = CHAIN.format(mid=mid, grads=grads)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "freed 100001"


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    residual=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_random_mlps_match_the_oracle(
    widths: list[int], residual: bool, dtype: torch.dtype
) -> None:
    layers = nn.ModuleList(nn.Linear(w, w).to(dtype) for w in widths)
    out = torch.zeros((), dtype=dtype)
    for lin, w in zip(layers, widths, strict=True):
        x = torch.randn(2, w, dtype=dtype)
        h = torch.tanh(lin(x))
        out = out + (h + x).sum() if residual else out + h.sum()
    g = gradscope.graph(out, params=layers)
    names, n_nodes, n_edges = oracle(out)
    assert (len(g.nodes), len(g.edges), _ops(g)) == (n_nodes, n_edges, names)
    assert all(s.dtype == str(dtype).removeprefix("torch.") for n in g.nodes for s in n.saved)


def test_walking_every_step_leaks_neither_model_nor_nodes() -> None:
    import gc
    import weakref

    from gradscope._graph.module_tags import install_module_tagging

    net = gradscope.LeNet()
    install_module_tagging(net)
    x = torch.randn(1, 1, 32, 32)
    kept = None
    for step in range(3):
        out = net(x)
        if step == 1:
            kept = out  # an intermediate tensor that outlives its loss
        loss = out.pow(2).sum()
        g = gradscope.graph(loss, params=net, grads=True)
        loss.backward()
        assert g.first_nonfinite is None
    addmm = loss.grad_fn.next_functions[0][0].next_functions[0][0]  # type: ignore[union-attr]
    acc = addmm.next_functions[0][0]  # fc3.bias's AccumulateGrad, the same node every step
    assert acc.name() == "torch::autograd::AccumulateGrad"
    assert not [k for k in acc.metadata if "gradscope" in k]  # nothing piles up on it
    del addmm
    model_ref = weakref.ref(net)
    # a graph without backward whose output outlives its loss (the holder moves to the output)
    out = net(x)
    loss2 = out.sum()
    g2 = gradscope.graph(loss2, params=net)
    act = out.grad_fn._saved_mat1  # type: ignore[union-attr]  # fc3's input, saved for backward
    act_ref = weakref.ref(act)
    del act, loss2
    gc.collect()
    assert act_ref() is not None  # out still needs it
    del net, out, loss, g, g2, kept, acc
    gc.collect()
    assert model_ref() is None
    assert act_ref() is None


def test_op_names_of_custom_functions_and_builtin_nodes() -> None:
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
            return g * 2

    x = torch.ones(2, requires_grad=True)
    for _ in range(2):  # the second walk reads the per-type cache
        g = gradscope.graph(Double.apply(x).exp().sum())
        assert [n.op for n in g.nodes if n.kind == "op"] == [
            "SumBackward0",
            "ExpBackward0",
            "DoubleBackward",
        ]
        double = next(n for n in g.nodes if n.op == "DoubleBackward")
        assert [(t.shape, t.nbytes) for t in double.saved] == [((2,), 8)]


def _saved_bytes(g: gradscope.Graph) -> int:
    return sum(n.saved_bytes for n in g.nodes)


def _oracle_saved_bytes(out: torch.Tensor) -> int:
    """Saved activation bytes by a hand walk over the nodes' own _saved_* attributes."""
    total, seen, stack = 0, set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        storages: dict[int, int] = {}
        for attr in dir(fn):
            if attr.startswith("_saved_"):
                value = getattr(fn, attr)
                if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                    storages[value.data_ptr()] = max(
                        storages.get(value.data_ptr(), 0), value.nbytes
                    )
        total += sum(storages.values())
        stack.extend(c for c, _ in fn.next_functions)
    return total


def test_saved_tensors_are_read_lazily_yet_survive_backward_and_a_dropped_loss() -> None:
    x = torch.randn(5, 7, requires_grad=True)
    w = torch.randn(7, 3, requires_grad=True)

    def loss_of() -> torch.Tensor:
        return torch.tanh(x @ w).pow(2).sum()

    loss = loss_of()
    expected = _oracle_saved_bytes(loss)
    assert expected > 0
    # nothing read during the walk; read on first look
    g = gradscope.graph(loss)
    assert not g._walked.reader.done  # type: ignore[union-attr]
    assert _saved_bytes(g) == expected
    # the loss dies right away: read while its nodes still live
    g = gradscope.graph(loss_of())
    gc_collect()
    assert _saved_bytes(g) == expected
    # backward frees them: saved=True (the default) reads them as backward starts
    loss = loss_of()
    g = gradscope.graph(loss, grads=True)
    loss.backward()
    assert _saved_bytes(g) == expected
    # saved=False: not read, and the picture says why
    loss = loss_of()
    g = gradscope.graph(loss, grads=True, saved=False)
    loss.backward()
    assert _saved_bytes(g) == 0
    assert "backward() freed them before they were read" in g.to_dot()


def gc_collect() -> None:
    import gc

    gc.collect()


def test_walk_in_another_thread_falls_back_to_a_full_topological_sort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    import gradscope._graph.walk as walk_module

    x = torch.randn(3, requires_grad=True)
    a = x.exp().exp()  # numbered by this thread's counter, far along
    box: dict[str, torch.Tensor] = {}

    def other() -> None:  # a new thread numbers from its own counter, from 0: consumer < input
        box["out"] = (a * 2).sum()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    out = box["out"]
    assert out.grad_fn._sequence_nr() < a.grad_fn._sequence_nr()  # type: ignore[union-attr]
    calls = []
    real = walk_module.topological
    monkeypatch.setattr(walk_module, "topological", lambda *args: calls.append(1) or real(*args))
    g = gradscope.graph(out)
    assert calls  # the sequence-number order was refused
    _, n_nodes, n_edges = oracle(out)
    assert (len(g.nodes), len(g.edges)) == (n_nodes, n_edges)
    order = g._walked.result.topo  # type: ignore[union-attr]
    pos = {i: k for k, i in enumerate(order)}
    assert all(pos[e.src] < pos[e.dst] for e in g.edges)  # consumers first, always
