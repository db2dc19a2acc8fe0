"""The command line's TARGET: find a model factory, build the model, run it to a loss.

TARGET is ``package.module:factory`` or ``path/to/file.py:factory``; the factory is any
callable (a function, an ``nn.Module`` subclass) that returns an ``nn.Module`` when called
with no arguments. Every failure becomes one GradscopeError sentence saying what to fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import GradscopeError
from .._naming import describe, suggest

__all__ = [
    "DTYPES",
    "LOSSES",
    "build_model",
    "load_factory",
    "make_inputs",
    "parse_shape",
    "to_loss",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
LOSSES = ("sum", "mean", "mse")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,1,32,32"`` (or ``1x1x32x32``) -> ``(1, 1, 32, 32)``.

    >>> parse_shape("1,1,32,32")
    (1, 1, 32, 32)
    """
    parts = text.replace("x", ",").replace(" ", "").strip(",").split(",")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise GradscopeError(
            f"--input {text!r} is not a shape: write sizes separated by commas, e.g. 1,1,32,32"
        )
    return shape


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise GradscopeError(f"TARGET file {str(path)!r} does not exist")
    name = f"gradscope_target_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GradscopeError(f"cannot load {str(path)!r} as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import its neighbours, as `python file.py` can
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        sys.modules.pop(name, None)
        raise GradscopeError(f"running {str(path)!r} raised {_one_line(error)}") from error
    finally:
        sys.path.remove(folder)
    return module


def _import_module(dotted: str) -> Any:
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as error:
        missing = error.name or dotted
        hint = (
            "check the spelling, install it, or run from the folder that holds it"
            if missing == dotted.split(".")[0] or missing == dotted
            else f"it needs {missing!r}, which is not installed"
        )
        raise GradscopeError(
            f"cannot import {dotted!r}: no module named {missing!r}; {hint}"
        ) from error
    except Exception as error:
        raise GradscopeError(f"importing {dotted!r} raised {_one_line(error)}") from error


def load_factory(target: str) -> Callable[[], Any]:
    """The callable that TARGET names; see the module docstring for the two forms."""
    where, colon, attribute = target.rpartition(":")
    if not colon or not where or not attribute:
        raise GradscopeError(
            f"TARGET {target!r} has no ':factory' part: write package.module:factory or "
            "path/to/file.py:factory, where factory() returns an nn.Module"
        )
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(Path(where))
    else:
        module = _import_module(where)
    found: Any = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(found, part):
            owner = where if i == 0 else f"{where}:{'.'.join(attribute.split('.')[:i])}"
            names = [n for n in dir(found) if not n.startswith("_")]
            raise GradscopeError(f"{owner!r} has no attribute {part!r}{suggest(part, names)}")
        found = getattr(found, part)
    if not callable(found):
        raise GradscopeError(
            f"{target!r} is {describe(found)}, not callable: name a function or class that "
            "returns an nn.Module"
        )
    factory: Callable[[], Any] = found
    return factory


def build_model(target: str) -> nn.Module:
    """Call TARGET's factory with no arguments and check that it gave an ``nn.Module``."""
    factory = load_factory(target)
    try:
        model = factory()
    except Exception as error:
        raise GradscopeError(f"the factory {target!r} raised {_one_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise GradscopeError(f"the factory {target!r} returned {describe(model)}, not an nn.Module")
    return model


def make_inputs(
    shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    """Random normal inputs of these shapes (reproducible: one generator seeded with ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, Mapping):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, Sequence) and not isinstance(output, (str, bytes)):
        for value in output:
            yield from _tensors(value)


def to_loss(model: nn.Module, inputs: Sequence[torch.Tensor], loss: str) -> torch.Tensor:
    """Run ``model(*inputs)`` and reduce its floating-point outputs to one scalar loss.

    ``loss`` is "sum", "mean" or "mse" (MSELoss against a random target of the same shape).
    """
    if loss not in LOSSES:
        raise GradscopeError(f"--loss {loss!r} is not one of {', '.join(LOSSES)}")
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    try:
        output = model(*inputs)
    except Exception as error:
        raise GradscopeError(
            f"the model's forward failed on input shape {shapes}: {_one_line(error)}; pass the "
            "shape it expects with --input (once per input), e.g. --input 1,3,224,224"
        ) from error
    outputs = [t for t in _tensors(output) if t.is_floating_point() and t.requires_grad]
    if not outputs:
        raise GradscopeError(
            f"the model returned {describe(output)}: no floating-point tensor that requires grad, "
            "so there is no backward graph (does the model have trainable parameters?)"
        )
    generator = torch.Generator().manual_seed(1)
    terms = []
    for out in outputs:
        if loss == "sum":
            terms.append(out.sum())
        elif loss == "mean":
            terms.append(out.mean())
        else:
            target = torch.randn(out.shape, generator=generator).to(out.dtype)
            terms.append(nn.functional.mse_loss(out, target))
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
