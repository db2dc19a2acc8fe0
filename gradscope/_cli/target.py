"""The command line's TARGET: find a model factory, build the model, run it to a loss.

TARGET is ``package.module:factory`` or ``path/to/file.py:factory``; the factory is any
callable (a function, an ``nn.Module`` subclass) that returns an ``nn.Module`` when called
with no arguments. Every failure becomes one GradscopeError sentence saying what to fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
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
    "INPUT_DTYPES",
    "LOSSES",
    "available_memory",
    "build_model",
    "check_memory",
    "load_factory",
    "make_inputs",
    "parse_shape",
    "to_loss",
    "vocab_of",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Inputs may also be integers: token ids for embedding models.
INPUT_DTYPES: dict[str, torch.dtype] = {**DTYPES, "int64": torch.int64, "int32": torch.int32}
LOSSES = ("sum", "mean", "mse")
_MAX_NUMEL = 2**63 - 1  # torch sizes are int64


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
    numel = math.prod(shape)
    if numel > _MAX_NUMEL:
        raise GradscopeError(
            f"--input {text!r} has {numel:.3g} elements, more than a tensor can hold "
            f"(2**63 - 1); pass the shape the model takes, e.g. 1,3,224,224"
        )
    return shape


def available_memory() -> int | None:
    """Bytes of memory this machine can still hand out (Linux ``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_memory(
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[torch.dtype],
    available: int | None = None,
) -> None:
    """Refuse inputs that alone need more memory than the machine has left."""
    needed = sum(
        math.prod(shape) * dtype.itemsize for shape, dtype in zip(shapes, dtypes, strict=True)
    )
    available = available_memory() if available is None else available
    if available is not None and needed > available:
        shown = ", ".join(",".join(map(str, shape)) for shape in shapes)
        raise GradscopeError(
            f"--input {shown} needs {_size(needed)} for the inputs alone (before any "
            f"activation), and this machine has {_size(available)} of memory available; "
            "pass smaller shapes (a batch of 1 draws the same graph)"
        )


def _exited(error: SystemExit, what: str) -> GradscopeError:
    """SystemExit from the user's code is not the command line's own exit: say what happened."""
    return GradscopeError(
        f"{what} called sys.exit({error.code!r}) instead of returning the model (script code "
        "belongs under `if __name__ == '__main__':`)"
    )


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
    except SystemExit as error:
        sys.modules.pop(name, None)
        raise _exited(error, f"running {str(path)!r}") from None
    except Exception as error:
        sys.modules.pop(name, None)
        raise GradscopeError(f"running {str(path)!r} raised {_one_line(error)}") from error
    finally:
        sys.path.remove(folder)
    return module


def _import_module(dotted: str) -> Any:
    # As `python -m` does: modules in the current folder are importable (the console script
    # alone would put its own bin folder first on sys.path, not the folder it runs in).
    here = os.getcwd()
    sys.path.insert(0, here)
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as error:
        missing = error.name or dotted
        hint = (
            f"check the spelling, install it, or run from the folder that holds it (this is {here})"
            if missing == dotted.split(".")[0] or missing == dotted
            else f"it needs {missing!r}, which is not installed"
        )
        raise GradscopeError(
            f"cannot import {dotted!r}: no module named {missing!r}; {hint}"
        ) from error
    except SystemExit as error:
        raise _exited(error, f"importing {dotted!r}") from None
    except Exception as error:
        raise GradscopeError(f"importing {dotted!r} raised {_one_line(error)}") from error
    finally:
        sys.path.remove(here)


def load_factory(target: str) -> Callable[[], Any]:
    """The callable that TARGET names; see the module docstring for the two forms."""
    where, colon, attribute = target.rpartition(":")
    if not colon or not attribute:
        raise GradscopeError(
            f"TARGET {target!r} has no ':factory' part: write package.module:factory or "
            "path/to/file.py:factory, where factory() returns an nn.Module"
        )
    if not where:
        raise GradscopeError(
            f"TARGET {target!r} has no module part before ':{attribute}': write "
            f"package.module:{attribute} or path/to/file.py:{attribute}"
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
    except SystemExit as error:
        raise _exited(error, f"the factory {target!r}") from None
    except Exception as error:
        raise GradscopeError(f"the factory {target!r} raised {_one_line(error)}") from error
    if not isinstance(model, nn.Module):
        raise GradscopeError(f"the factory {target!r} returned {describe(model)}, not an nn.Module")
    return model


def vocab_of(model: nn.Module) -> int | None:
    """The smallest ``num_embeddings`` of the model's embeddings: valid token ids lie below."""
    sizes = [
        m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    ]
    return min(sizes) if sizes else None


def make_inputs(
    shapes: Sequence[tuple[int, ...]],
    dtype: torch.dtype | Sequence[torch.dtype],
    seed: int = 0,
    *,
    vocab: int | None = None,
) -> list[torch.Tensor]:
    """Random inputs of these shapes, reproducible (one generator seeded with ``seed``).

    Floating-point inputs are standard normal; integer ones (token ids) uniform in
    ``[0, vocab)``. ``dtype`` is one dtype for every input or one per input.
    """
    dtypes = [dtype] * len(shapes) if isinstance(dtype, torch.dtype) else list(dtype)
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    try:
        for shape, kind in zip(shapes, dtypes, strict=True):
            if kind.is_floating_point:
                inputs.append(torch.randn(shape, generator=generator, dtype=kind))
                continue
            if vocab is None:
                raise GradscopeError(
                    "integer inputs need --vocab N (ids are drawn from 0 to N-1); the model "
                    "has no nn.Embedding to take N from"
                )
            inputs.append(torch.randint(0, vocab, shape, generator=generator, dtype=kind))
    except (RuntimeError, MemoryError) as error:
        raise GradscopeError(
            f"could not allocate inputs of shape {', '.join(str(s) for s in shapes)}: "
            f"{_one_line(error)}; pass smaller shapes with --input"
        ) from error
    return inputs


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
        text = str(error)
        if isinstance(error, MemoryError | torch.OutOfMemoryError) or "allocate" in text:
            raise GradscopeError(
                f"the model ran out of memory on input shape {shapes}: {_one_line(error)}; "
                "pass smaller shapes with --input (a batch of 1 draws the same graph)"
            ) from error
        floats = all(x.is_floating_point() for x in inputs)
        if floats and (vocab_of(model) is not None or "indices" in text or "Long" in text):
            raise GradscopeError(
                f"the model's forward failed on floating-point inputs of shape {shapes}: "
                f"{_one_line(error)}; if it takes token ids, pass --input-dtype int64 (ids are "
                "drawn below --vocab, by default the smallest nn.Embedding size)"
            ) from error
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
