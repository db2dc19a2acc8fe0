"""The walk's small parts on their own: Kahn's order, the freed-graph error, leaves and labels."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradscope import GradscopeError
from gradscope._graph.walk import (
    _OP_NAMES,
    GraphFreed,
    GraphNode,
    SavedTensor,
    op_name,
    raise_freed,
    topological,
)


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    """A random DAG on n nodes (edges go from a lower to a higher number after a shuffle),
    repeated edges included, as autograd makes for ``x * x``."""
    n = draw(st.integers(1, 12))
    perm = draw(st.permutations(range(n)))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    src, dst = [], []
    for a, b in pairs:
        if a != b:
            lo, hi = min(a, b), max(a, b)
            src.append(perm[lo])
            dst.append(perm[hi])
    return n, src, dst


@settings(max_examples=200)
@given(dags())
def test_topological_puts_every_consumer_before_what_it_feeds(
    dag: tuple[int, list[int], list[int]],
) -> None:
    n, src, dst = dag
    order = topological(n, src, dst)
    assert sorted(order) == list(range(n))  # every node exactly once
    pos = {i: k for k, i in enumerate(order)}
    assert all(pos[s] < pos[d] for s, d in zip(src, dst, strict=True))


def test_topological_literal_orders() -> None:
    # a diamond 0 -> {1, 2} -> 3, with the edge 0 -> 1 twice (x * x): Kahn, newest ready first
    assert topological(4, [0, 0, 0, 1, 2], [1, 1, 2, 3, 3]) == [0, 2, 1, 3]
    assert topological(3, [2, 1], [1, 0]) == [2, 1, 0]  # a chain numbered backwards
    assert topological(3, [], []) == [2, 1, 0]
    assert topological(0, [], []) == []


def test_topological_keeps_every_node_of_a_cycle() -> None:
    # autograd cannot make a cycle; if it did, no node may be dropped: the stuck ones come last
    assert topological(4, [0, 1, 3], [1, 0, 2]) == [3, 2, 0, 1]


def test_graph_freed_carries_the_op() -> None:
    err = GraphFreed("MulBackward0")
    assert err.op == "MulBackward0"
    assert str(err) == "MulBackward0"
    assert err.args == ("MulBackward0",)


def test_raise_freed_names_the_op_and_the_fix() -> None:
    with pytest.raises(GradscopeError) as info:
        raise_freed("AddmmBackward0", grads=False)
    assert "AddmmBackward0 has no saved tensors left" in str(info.value)
    assert "retain_graph=True" in str(info.value)
    assert info.value.__suppress_context__
    with pytest.raises(GradscopeError) as info:
        raise_freed("AddmmBackward0", grads=True)
    assert "graph(..., grads=True) was called after backward()" in str(info.value)
    assert "AddmmBackward0 has no saved tensors left" in str(info.value)
    assert "before loss.backward()" in str(info.value)


def test_saved_bytes_counts_shared_storage_once_and_skips_parameters() -> None:
    a = SavedTensor("self", (4,), "float32", 16, storage=7)
    a_view = SavedTensor("other", (2,), "float32", 8, storage=7)  # same storage, smaller
    b = SavedTensor("mat1", (3,), "float32", 12, storage=9)
    weight = SavedTensor("mat2", (10,), "float32", 40, is_parameter=True, storage=11)
    no_ptr = SavedTensor("x", (1,), "float32", 4)  # storage unknown: counted on its own
    no_ptr2 = SavedTensor("y", (2,), "float32", 8)
    node = GraphNode(0, "AddmmBackward0", "op", saved=(a_view, a, b, weight, no_ptr, no_ptr2))
    assert node.saved_bytes == 16 + 12 + 4 + 8
    assert GraphNode(0, "MulBackward0", "op").saved_bytes == 0
    collapsed = GraphNode(0, "Linear", "module", saved=(a, b), saved_total=5)
    assert collapsed.saved_bytes == 5
    assert GraphNode(0, "Linear", "module", saved=(a,), saved_total=0).saved_bytes == 0


def test_labels() -> None:
    assert GraphNode(0, "AccumulateGrad", "parameter", param="fc.bias").label == (
        "AccumulateGrad[fc.bias]"
    )
    assert GraphNode(0, "AccumulateGrad", "parameter").label == "AccumulateGrad[parameter]"
    assert (
        GraphNode(0, "AccumulateGrad", "leaf", shape=(2, 3)).label == "AccumulateGrad[leaf (2, 3)]"
    )
    assert GraphNode(0, "AccumulateGrad", "leaf").label == "AccumulateGrad"
    assert GraphNode(0, "MulBackward0", "op").label == "MulBackward0"
    hook = "RegisterPostBackwardFunctionBackward"
    assert GraphNode(0, hook, "op").label == (
        "FSDP2 post-backward hook (reduce-scatter) [RegisterPostBackwardFunctionBackward]"
    )


def test_leaves_of_the_walk_name_parameters_and_plain_tensors() -> None:
    from gradscope._graph.walk import walk

    lin = nn.Linear(3, 2)
    x = torch.randn(4, 3, requires_grad=True)
    out = lin(x).sum()
    names = {id(lin.weight): "weight"}  # bias left unnamed on purpose
    result = walk([out], names)
    leaves = sorted(result.leaves.values(), key=lambda leaf: leaf.shape)
    assert [(leaf.name, leaf.shape, leaf.is_param) for leaf in leaves] == [
        (None, (2,), True),  # an nn.Parameter, though not in the names
        ("weight", (2, 3), True),
        (None, (4, 3), False),
    ]
    # a leaf root: one node, no edges, seq -1
    alone = walk([x], {id(x): "x"})
    assert (alone.ops, alone.seq, alone.src, alone.roots) == (["AccumulateGrad"], [-1], [], [0])
    assert alone.leaves[0].name == "x" and alone.leaves[0].is_param


class _Node:
    """A stand-in autograd node: ``name()`` as torch reports it, and how often it was asked."""

    asked = 0

    def __init__(self, full: str) -> None:
        self.full = full

    def name(self) -> str:
        type(self).asked += 1
        return self.full


def test_op_name_asks_each_node_type_once() -> None:
    class OwnBackward(_Node):  # a type of its own: named as the node calls itself
        asked = 0

    assert op_name(OwnBackward("torch::autograd::OwnBackward")) == "OwnBackward"
    assert op_name(OwnBackward("torch::autograd::OwnBackward")) == "OwnBackward"
    assert OwnBackward.asked == 1  # the second node of the type was not asked
    real = (torch.ones(2, requires_grad=True) * 2).grad_fn
    assert op_name(real) == "MulBackward0"
    assert _OP_NAMES[type(real)] == "MulBackward0"


def test_op_name_asks_every_node_of_a_generic_type() -> None:
    class Wrapper(_Node):  # one Python type for many ops (C++ functions, wrappers): never cached
        asked = 0

    assert op_name(Wrapper("torch::autograd::CppA")) == "CppA"
    assert op_name(Wrapper("CppB")) == "CppB"  # no prefix: the name as given
    assert Wrapper.asked == 2
    assert Wrapper not in _OP_NAMES


def test_several_roots_leaf_roots_and_repeated_roots() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    x = torch.randn(3, requires_grad=True)
    a = (w * 2).sum()
    b = (w + 1).sum()
    result = walk([x, a, a, b, x], {})
    # oracle: a plain next_functions traversal of a and b (x and w are AccumulateGrad leaves)
    assert len(result) == 1 + 3 + 2 + 1  # x's own node; Sum, Mul, w; Sum, Add (w shared); x again
    assert result.roots[0] == 0 and result.roots[4] == 6  # each leaf root is its own node
    assert result.roots[1] == result.roots[2] == 1  # a twice: one node
    assert result.roots[3] == 4
    assert result.ops[:4] == ["AccumulateGrad", "SumBackward0", "MulBackward0", "AccumulateGrad"]
    assert result.ops[4:] == ["SumBackward0", "AddBackward0", "AccumulateGrad"]
    assert result.keys[0] == result.keys[6] == 0  # leaf roots have no node to key
    assert result.seq[0] == result.seq[3] == result.seq[6] == -1  # leaves: roots or reached
    assert all(s >= 0 for s in (result.seq[1], result.seq[2], result.seq[4], result.seq[5]))
    assert result.leaves[0].shape == (3,) and result.leaves[6].shape == (3,)
    assert sorted(zip(result.src, result.dst, strict=True)) == [(1, 2), (2, 3), (4, 5), (5, 3)]


def test_keys_are_the_nodes_ids_and_a_second_walk_reuses_the_first_holders() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    out = (w.exp() * 2).sin().sum()
    seen: list[list[int]] = []
    first = walk([out], {}, on_walked=lambda r, fns: seen.append([id(f) for f in fns]))
    assert first.keys == seen[0]
    assert first.keys[0] == id(out.grad_fn)
    # the first walk's holder keeps every node that has inputs; a second walk of the same graph
    # makes a holder only for its root and points the rest at the first holder
    inner = [i for i in range(1, len(first)) if i in first.src]
    assert len(inner) == 3
    held = {first.holders[i] for i in inner}
    assert len(held) == 1 and None not in held
    second = walk([out], {})
    assert [second.holders[i] for i in inner] == [first.holders[i] for i in inner]
    assert second.keys == first.keys


class _Broken:
    """A root whose node fails while it is walked (a node type torch may add one day)."""

    class grad_fn:  # stands in for tensor.grad_fn
        @staticmethod
        def name() -> str:
            return "BrokenBackward"

        @staticmethod
        def _sequence_nr() -> int:
            return 1

        @property
        def next_functions(self) -> Any:
            raise RuntimeError("broken node")

    grad_fn = grad_fn()  # type: ignore[assignment,misc]


def test_a_walk_that_fails_midway_raises_its_own_error_after_the_hand_over() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    out = (w.exp() * 2).sin().sum()
    # the first root was walked whole; the finally hands its nodes over and must not fail itself
    with pytest.raises(RuntimeError, match="broken node"):
        walk([out, _Broken()], {})  # type: ignore[list-item]
    assert walk([out], {}).ops[0] == "SumBackward0"  # the graph is still walkable


def _holder(result: Any, i: int) -> Any:
    ref = result.holders[i]
    return None if ref is None else ref()


def test_each_root_holds_exactly_the_inner_nodes_it_reached_first() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    lone = w.sum()  # Sum -> w: one inner node, nothing for a holder to keep
    pair = (w * 2).sum()  # Sum -> Mul -> w: the smallest part that gets a holder
    long = (w.exp() * 2).sin().sum()
    result = walk([lone, pair, long], {})
    # oracle: a plain next_functions traversal per root, leaves (AccumulateGrad) left out
    expected: list[set[int]] = []
    seen: set[int] = set()
    for root in (lone, pair, long):
        part, stack = set(), [root.grad_fn]
        while stack:
            fn = stack.pop()
            if id(fn) in seen or type(fn).__name__ == "AccumulateGrad":
                continue
            seen.add(id(fn))
            part.add(id(fn))
            stack.extend(child for child, _ in fn.next_functions if child is not None)
        expected.append(part)
    assert [len(p) for p in expected] == [1, 2, 4]
    assert _holder(result, result.roots[0]) is None  # a part of one node needs no holder
    holders = [_holder(result, result.roots[k]) for k in (1, 2)]
    assert all(h is not None for h in holders) and holders[0] is not holders[1]
    for holder, part, root in zip(holders, expected[1:], (pair, long), strict=True):
        assert {id(fn) for fn in holder.fns} == part - {id(root.grad_fn)}  # the root keeps them
        assert holder.children is None  # small parts never re-home
    for i, op in enumerate(result.ops):
        if op == "AccumulateGrad":
            assert result.holders[i] is None  # leaves free without recursion: not held
        elif i != result.roots[0]:
            assert _holder(result, i) in holders
    assert [h() for h in result.own_holders] == holders


def test_a_part_above_small_lists_each_nodes_inputs_for_re_homing() -> None:
    from gradscope._graph.safe_free import SMALL
    from gradscope._graph.walk import walk

    w = torch.randn(2, requires_grad=True)
    x = w * 1.0
    for _ in range(SMALL + 5):
        x = x * 1.0
    out = (x + w).sum()  # w is reached from the top and from the bottom of the chain
    result = walk([out], {})
    holder = _holder(result, result.roots[0])
    # the root (Sum) keeps the others: Add and SMALL + 6 Muls
    assert holder is not None and len(holder.fns) == SMALL + 7
    # oracle: each held node's inputs, by position in the holder, from next_functions
    position = {id(fn): k for k, fn in enumerate(holder.fns)}
    oracle = [
        sorted(position[id(c)] for c, _ in fn.next_functions if c is not None and id(c) in position)
        for fn in holder.fns
    ]
    # (compared position by position: pytest's diff of two 2,000-entry lists takes minutes)
    wrong = [k for k, c in enumerate(holder.children) if sorted(c) != oracle[k]]
    assert len(holder.children) == len(oracle) and not wrong, wrong[:5]
    assert holder.fns[0] is out.grad_fn.next_functions[0][0]
    assert sum(map(len, oracle)) == SMALL + 6  # a chain: each node but the last feeds the next


def test_a_holder_lists_its_nodes_consumers_first() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    x = w.exp()
    # Add reaches Exp before Sin -> Mul does: the order the walk found them in is not a
    # topological one (Exp would come before Mul, which consumes it)
    out = (x + (x * 2).sin()).sum()
    result = walk([out], {})
    holder = _holder(result, result.roots[0])
    assert holder is not None
    # oracle: next_functions edges; each held node comes before every input it has
    fns = [out.grad_fn, *holder.fns]
    position = {id(fn): k for k, fn in enumerate(fns)}
    assert len(fns) == 5
    for k, fn in enumerate(fns):
        for child, _ in fn.next_functions:
            if child is not None and id(child) in position:
                assert position[id(child)] > k, (type(fn).__name__, type(child).__name__)


def test_a_walk_that_fails_midway_still_hands_over_what_it_walked() -> None:
    from gradscope._graph.walk import walk

    w = torch.randn(3, requires_grad=True)
    out = (w.exp() * 2).sin().sum()
    with pytest.raises(RuntimeError, match="broken node"):
        walk([out, _Broken()], {})  # type: ignore[list-item]
    # the failed walk's holder keeps out's inner nodes: a second walk finds them held and
    # makes no holder of its own (a root alone needs none)
    second = walk([out], {})
    inner = [i for i in range(1, len(second)) if i in second.src]
    assert len(inner) == 3
    assert second.own_holders == []
    assert all(second.holders[i] is not None for i in inner)
