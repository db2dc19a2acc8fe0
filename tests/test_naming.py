"""Parameter names: wrappers unwrapped, tied aliases resolved, close names suggested."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradscope import GradscopeError, UnknownParameterError
from gradscope._naming import describe, named_parameters, suggest, unwrap_module


def test_module_mapping_and_pairs_give_the_same_names() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    expected = [name for name, _ in net.named_parameters()]
    assert list(named_parameters(net).params) == expected
    assert list(named_parameters(dict(net.named_parameters())).params) == expected
    assert list(named_parameters(list(net.named_parameters())).params) == expected


def test_tied_parameters_resolve_to_the_first_name() -> None:
    net = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    net["b"].weight = net["a"].weight
    names = named_parameters(net)
    assert "b.weight" not in names.params
    assert names.resolve("b.weight") == "a.weight"
    assert names.aliases("b.weight") == ["a.weight", "b.weight"]
    assert names.name_of(net["a"].weight) == "a.weight"


def test_wrappers_are_unwrapped() -> None:
    net = nn.Linear(2, 2)
    assert unwrap_module(nn.DataParallel(net)) is net
    compiled = torch.compile(net, backend="eager")
    assert unwrap_module(compiled) is net
    assert list(named_parameters(compiled).params) == ["weight", "bias"]


def test_unknown_names_and_bad_input_are_explained() -> None:
    names = named_parameters(nn.Linear(2, 2))
    with pytest.raises(UnknownParameterError, match=r"did you mean 'weight'"):
        names.resolve("wieght")
    assert "known names" in suggest("zzz", ["a", "b"])
    assert "no parameters" in suggest("zzz", [])
    with pytest.raises(GradscopeError, match=r"not a tensor of shape \(2,\)"):
        named_parameters(torch.zeros(2))  # type: ignore[arg-type]
    with pytest.raises(GradscopeError, match="entry 'x' is int 3"):
        named_parameters({"x": 3})  # type: ignore[dict-item]
    assert describe("a" * 100).endswith("...'") or describe("a" * 100).endswith("...")


def test_iterables_of_tensors_are_named_by_position_and_read_once() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert list(named_parameters(net.parameters()).params) == ["[0]", "[1]", "[2]", "[3]"]
    params = list(net.parameters())
    names = named_parameters([*params, params[0]])  # the same tensor twice: one entry
    assert list(names.params) == ["[0]", "[1]", "[2]", "[3]"] and names.resolve("[4]") == "[0]"
    pairs = named_parameters(iter(net.named_parameters()))
    assert list(pairs.params) == [n for n, _ in net.named_parameters()]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([torch.zeros(2), 3], r"entry 1 is int 3: an iterable passed as params= must hold"),
        ([nn.Linear(2, 2)], r"entry 0 is Linear.*pass the model itself, or nn.ModuleList"),
        ([("w", 3)], r"entry 0 is tuple"),
        ("weight", r"not str 'weight'"),
        ({1: torch.zeros(2)}, r"mapping keys are parameter names \(str\), got int 1"),
    ],
)
def test_bad_iterables_are_explained(params: object, message: str) -> None:
    with pytest.raises(GradscopeError, match=message):
        named_parameters(params)  # type: ignore[arg-type]
