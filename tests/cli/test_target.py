"""The command line's TARGET loader: module and file factories, inputs, losses, and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope import GradscopeError
from gradscope._cli.target import (
    build_model,
    check_memory,
    load_factory,
    make_inputs,
    parse_shape,
    to_loss,
    vocab_of,
)


def test_module_factory() -> None:
    assert load_factory("gradscope._lenet:LeNet") is gradscope.LeNet
    assert isinstance(build_model("gradscope:LeNet"), gradscope.LeNet)
    assert isinstance(build_model("torch.nn:Identity"), nn.Identity)


def test_file_factory_can_import_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "blocks.py").write_text("from torch import nn\nWIDTH = 7\n")
    (tmp_path / "model.py").write_text(
        "from torch import nn\nimport blocks\n\n"
        "def make():\n    return nn.Linear(3, blocks.WIDTH)\n\n"
        "if __name__ == '__main__':\n    raise SystemExit('must not run')\n"
    )
    before = list(sys.path)
    model = build_model(f"{tmp_path / 'model.py'}:make")
    assert isinstance(model, nn.Linear) and model.out_features == 7
    assert sys.path == before
    sys.modules.pop("blocks", None)


def test_dotted_attribute() -> None:
    assert load_factory("gradscope:LeNet.forward") is gradscope.LeNet.forward


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("gradscope._lenet", "has no ':factory' part"),
        ("gradscope._lenet:", "has no ':factory' part"),
        (":LeNet", "has no module part before ':LeNet'"),
        ("no_such_package_xyz:make", "cannot import 'no_such_package_xyz'"),
        ("gradscope._lenet:LeNt", "did you mean 'LeNet'"),
        ("gradscope:__version__", "not callable"),
        ("missing/model.py:make", "does not exist"),
    ],
)
def test_bad_targets_are_explained(target: str, message: str) -> None:
    with pytest.raises(GradscopeError, match=message):
        build_model(target)


def test_factory_that_raises_or_returns_the_wrong_thing(tmp_path: Path) -> None:
    source = tmp_path / "factories.py"
    source.write_text(
        "def broken():\n    raise ValueError('weights file is missing')\n\n"
        "def wrong():\n    return 42\n"
    )
    with pytest.raises(GradscopeError, match="raised ValueError: weights file is missing"):
        build_model(f"{source}:broken")
    with pytest.raises(GradscopeError, match=r"returned int 42, not an nn\.Module"):
        build_model(f"{source}:wrong")


def test_a_file_that_fails_to_import(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("import torch\n1 / 0\n")
    with pytest.raises(GradscopeError, match="raised ZeroDivisionError"):
        build_model(f"{source}:make")


def test_parse_shape() -> None:
    assert parse_shape("1,1,32,32") == (1, 1, 32, 32)
    assert parse_shape("2x3") == (2, 3)
    assert parse_shape("5") == (5,)
    for bad in ("", "a,b", "1,0,3", "1,-2", "1.5,2"):
        with pytest.raises(GradscopeError, match="is not a shape"):
            parse_shape(bad)


def test_make_inputs_is_reproducible() -> None:
    first = make_inputs([(1, 3), (2,)], torch.float64)
    second = make_inputs([(1, 3), (2,)], torch.float64)
    assert [x.shape for x in first] == [(1, 3), (2,)]
    assert all(x.dtype == torch.float64 for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_losses_against_torch() -> None:
    net = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    out = net(x)
    torch.testing.assert_close(to_loss(net, [x], "sum"), out.sum())
    torch.testing.assert_close(to_loss(net, [x], "mean"), out.mean())
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(to_loss(net, [x], "mse"), nn.functional.mse_loss(out, target))
    assert to_loss(net, [x], "sum").grad_fn is not None


def test_structured_outputs_are_summed() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
            return {"a": self.a(x), "rest": (self.b(y), torch.arange(3))}

    net = Two()
    x, y = torch.randn(1, 2), torch.randn(1, 2)
    torch.testing.assert_close(to_loss(net, [x, y], "sum"), net.a(x).sum() + net.b(y).sum())


def test_forward_failures_are_explained() -> None:
    net = gradscope.LeNet()
    with pytest.raises(GradscopeError, match=r"forward failed on input shape \(1, 1, 28, 28\)"):
        to_loss(net, [torch.randn(1, 1, 28, 28)], "sum")
    with pytest.raises(GradscopeError, match="no floating-point tensor that requires grad"):
        to_loss(nn.Identity(), [torch.randn(2)], "sum")
    with pytest.raises(GradscopeError, match="--loss 'l1'"):
        to_loss(net, [torch.randn(1, 1, 32, 32)], "l1")


def test_a_factory_or_module_that_exits_is_explained(tmp_path: Path) -> None:
    source = tmp_path / "exits.py"
    source.write_text("def make():\n    raise SystemExit(3)\n")
    with pytest.raises(GradscopeError, match=r"the factory '.*exits.py:make' called sys.exit\(3\)"):
        build_model(f"{source}:make")
    script = tmp_path / "script.py"
    script.write_text("import sys\nsys.exit('usage: script.py ARGS')\n\ndef make():\n    pass\n")
    with pytest.raises(GradscopeError, match=r"running .* called sys.exit\('usage: script.py"):
        build_model(f"{script}:make")


def test_module_targets_are_found_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodels_here.py").write_text(
        "from torch import nn\n\ndef make_net():\n    return nn.Linear(3, 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    assert isinstance(build_model("mymodels_here:make_net"), nn.Linear)
    assert sys.path == before
    sys.modules.pop("mymodels_here", None)


def test_shapes_beyond_what_a_tensor_or_the_memory_holds() -> None:
    with pytest.raises(GradscopeError, match=r"more than a tensor can hold"):
        parse_shape("99999999999999999999999,4")
    with pytest.raises(GradscopeError, match=r"more than a tensor can hold"):
        parse_shape("4294967296,4294967296")
    check_memory([(1000, 1000)], [torch.float32], available=4_000_000)
    with pytest.raises(GradscopeError, match=r"needs 3.81 MiB for the inputs alone.* 3.81 MiB"):
        check_memory([(1000, 1000), (1,)], [torch.float32, torch.float32], available=4_000_000)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Embedding(7, 4)
        self.big = nn.Embedding(100, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.small(tokens) + self.big(tokens))
        return out


def test_integer_inputs_for_embedding_models() -> None:
    net = Tagger()
    assert vocab_of(net) == 7 and vocab_of(nn.Linear(2, 2)) is None
    (ids,) = make_inputs([(3, 50)], torch.int64, vocab=7)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < 7
    assert to_loss(net, [ids], "sum").grad_fn is not None
    mixed = make_inputs([(2,), (2,)], [torch.int32, torch.float64], vocab=3)
    assert [x.dtype for x in mixed] == [torch.int32, torch.float64]
    with pytest.raises(GradscopeError, match=r"integer inputs need --vocab N"):
        make_inputs([(2,)], torch.int64)
    with pytest.raises(GradscopeError, match=r"floating-point inputs.*--input-dtype int64"):
        to_loss(net, make_inputs([(3, 5)], torch.float32), "sum")
