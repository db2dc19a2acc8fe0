"""Hypothesis strategies for gradient tests: small random networks, inputs and optimizers.

Needs hypothesis (``pip install hypothesis``, or ``pip install 'gradscope[dev]'``).

>>> from hypothesis import given, settings, strategies as st
>>> import gradscope.strategies as gst
>>> @settings(max_examples=5, deadline=None)
... @given(st.data())
... def test_any_model_backprops(data):
...     case = data.draw(gst.models())
...     case.module(data.draw(case.inputs)).sum().backward()
>>> test_any_model_backprops()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "gradscope.strategies needs hypothesis: pip install hypothesis "
        "(or pip install 'gradscope[dev]')"
    ) from error

import numpy as np
import torch
from torch import nn

from ._errors import GradscopeError
from ._naming import describe

__all__ = ["ModelCase", "models", "optimizers", "tensors"]

Kind = Literal["linear", "conv1d", "conv2d"]
_KINDS: tuple[Kind, ...] = ("linear", "conv1d", "conv2d")
_ACTIVATIONS = ("relu", "relu_inplace", "tanh", "gelu", "sigmoid", "identity")


@dataclass(frozen=True)
class _Block:
    activation: str
    residual: bool
    reuse: bool  # apply the same layer twice: one parameter, two uses in the graph


@dataclass(frozen=True)
class _Spec:
    kind: Kind
    in_channels: int
    width: int
    out_channels: int
    kernel: int
    blocks: tuple[_Block, ...]
    frozen_branch: bool
    unused_branch: bool
    seed: int


def _activation(name: str) -> nn.Module:
    return {
        "relu": nn.ReLU(),
        "relu_inplace": nn.ReLU(inplace=True),
        "tanh": nn.Tanh(),
        "gelu": nn.GELU(),
        "sigmoid": nn.Sigmoid(),
        "identity": nn.Identity(),
    }[name]


class _Net(nn.Module):
    """The network a :class:`_Spec` describes; shapes are preserved between blocks."""

    def __init__(self, spec: _Spec) -> None:
        super().__init__()
        self.spec = spec

        def layer(i: int, o: int) -> nn.Module:
            if spec.kind == "linear":
                return nn.Linear(i, o)
            conv = nn.Conv1d if spec.kind == "conv1d" else nn.Conv2d
            return conv(i, o, spec.kernel, padding=spec.kernel // 2)

        self.stem = layer(spec.in_channels, spec.width)
        self.blocks = nn.ModuleList(layer(spec.width, spec.width) for _ in spec.blocks)
        self.acts = nn.ModuleList(_activation(b.activation) for b in spec.blocks)
        self.frozen = layer(spec.width, spec.width) if spec.frozen_branch else None
        if self.frozen is not None:
            self.frozen.requires_grad_(False)
        self.unused = layer(spec.width, spec.width) if spec.unused_branch else None
        self.head = layer(spec.width, spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, layer, act in zip(self.spec.blocks, self.blocks, self.acts, strict=True):
            y = act(layer(x))
            if block.reuse:
                y = act(layer(y))
            x = x + y if block.residual else y
        if self.frozen is not None:
            x = x + self.frozen(x)
        out: torch.Tensor = self.head(x)
        return out

    def extra_repr(self) -> str:
        return describe_spec(self.spec)


def describe_spec(spec: _Spec) -> str:
    parts = []
    for b in spec.blocks:
        text = b.activation + ("+res" if b.residual else "") + ("x2" if b.reuse else "")
        parts.append(text)
    extras = (" +frozen" if spec.frozen_branch else "") + (" +unused" if spec.unused_branch else "")
    sizes = f"{spec.in_channels}->{spec.width}->{spec.out_channels}"
    return f"{spec.kind} {sizes} [{', '.join(parts)}]{extras}"


def _build(spec: _Spec) -> _Net:
    # fork_rng: building layers draws default initial weights from the global generator; the
    # user's random stream must not depend on which model hypothesis drew.
    with torch.random.fork_rng(devices=[]):
        net = _Net(spec)
    g = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            if p.dim() == 1:
                p.mul_(0.1)
    return net


def tensors(
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    min_value: float = -3.0,
    max_value: float = 3.0,
    allow_nan: bool = False,
    allow_infinity: bool = False,
) -> st.SearchStrategy[torch.Tensor]:
    """Tensors of ``shape`` whose elements hypothesis draws (and shrinks) one by one.

    With ``allow_nan``/``allow_infinity`` some elements may be NaN or +-Inf.
    """
    if dtype not in (torch.float16, torch.float32, torch.float64):
        raise GradscopeError(f"tensors(dtype=...) takes a float dtype, not {dtype}")
    width: Literal[16, 32, 64] = (
        16 if dtype == torch.float16 else 32 if dtype == torch.float32 else 64
    )
    elements: st.SearchStrategy[float] = st.floats(min_value, max_value, width=width)
    specials = [v for v, ok in ((math.nan, allow_nan), (math.inf, allow_infinity)) if ok]
    if allow_infinity:
        specials.append(-math.inf)
    if specials:
        elements = st.one_of(elements, st.sampled_from(specials))
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
    arrays = hnp.arrays(np_dtype[dtype], tuple(shape), elements=elements)
    return arrays.map(lambda a: torch.from_numpy(np.array(a)))


@dataclass(frozen=True)
class ModelCase:
    """One drawn network with what a test needs to know about it.

    ``inputs`` draws batches that fit it; ``frozen`` and ``unused`` name the parameters that
    get no gradient on purpose (``requires_grad=False``, and never called in ``forward``).
    """

    module: nn.Module
    inputs: st.SearchStrategy[torch.Tensor]
    input_shape: tuple[int, ...]
    frozen: tuple[str, ...]
    unused: tuple[str, ...]
    description: str

    def __repr__(self) -> str:
        return f"ModelCase({self.description}, input_shape={self.input_shape})"


@st.composite
def _model_cases(
    draw: Any,
    kinds: tuple[Kind, ...],
    max_blocks: int,
    frozen_branch: bool | None,
    unused_branch: bool | None,
) -> ModelCase:
    kind = draw(st.sampled_from(kinds))
    blocks = draw(
        st.lists(
            st.builds(_Block, st.sampled_from(_ACTIVATIONS), st.booleans(), st.booleans()),
            max_size=max_blocks,
        )
    )
    spec = _Spec(
        kind=kind,
        in_channels=draw(st.integers(1, 4)),
        width=draw(st.integers(1, 6)),
        out_channels=draw(st.integers(1, 3)),
        kernel=draw(st.sampled_from([1, 3])),
        blocks=tuple(blocks),
        frozen_branch=draw(st.booleans()) if frozen_branch is None else frozen_branch,
        unused_branch=draw(st.booleans()) if unused_branch is None else unused_branch,
        seed=draw(st.integers(0, 2**16)),
    )
    batch = draw(st.integers(1, 3))
    spatial: tuple[int, ...] = {
        "linear": (),
        "conv1d": (draw(st.integers(2, 8)),),
        "conv2d": (draw(st.integers(2, 5)), draw(st.integers(2, 5))),
    }[kind]
    shape = (batch, spec.in_channels, *spatial)
    net = _build(spec)
    names = [n for n, _ in net.named_parameters()]
    return ModelCase(
        module=net,
        inputs=tensors(shape),
        input_shape=shape,
        frozen=tuple(n for n in names if n.startswith("frozen.")),
        unused=tuple(n for n in names if n.startswith("unused.")),
        description=describe_spec(spec),
    )


def models(
    *,
    kinds: Iterable[Kind] = _KINDS,
    max_blocks: int = 3,
    frozen_branch: bool | None = None,
    unused_branch: bool | None = None,
) -> st.SearchStrategy[ModelCase]:
    """Small random networks (Linear/Conv1d/Conv2d, activations incl. in-place ReLU, residual
    adds, a layer applied twice, optionally a frozen and an unused branch), each with an input
    strategy. ``frozen_branch``/``unused_branch``: True always, False never, None either.
    """
    chosen = tuple(kinds)
    bad = [k for k in chosen if k not in _KINDS]
    if bad or not chosen:
        raise GradscopeError(f"models(kinds=...) takes some of {_KINDS}, not {chosen!r}")
    if not isinstance(max_blocks, int) or max_blocks < 0:
        raise GradscopeError(f"models(max_blocks=...) takes an int >= 0, not {max_blocks!r}")
    return _model_cases(chosen, max_blocks, frozen_branch, unused_branch)


_LR = st.sampled_from([1e-3, 1e-2, 0.1])
_DECAY = st.sampled_from([0.0, 1e-2])


@st.composite
def _sgd(draw: Any, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    momentum = draw(st.sampled_from([0.0, 0.9]))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov or momentum == 0 else draw(st.sampled_from([0.0, 0.1]))
    return torch.optim.SGD(
        params,
        lr=draw(_LR),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=draw(_DECAY),
        maximize=draw(st.booleans()),
        foreach=draw(st.booleans()),
    )


@st.composite
def _adam(draw: Any, params: list[torch.Tensor], decoupled: bool) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(
        params,
        lr=draw(_LR),
        betas=(draw(st.sampled_from([0.8, 0.9])), draw(st.sampled_from([0.99, 0.999]))),
        eps=draw(st.sampled_from([1e-8, 1e-6])),
        weight_decay=draw(_DECAY),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
        foreach=draw(st.booleans()),
    )


@st.composite
def _rmsprop(draw: Any, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        params,
        lr=draw(_LR),
        alpha=draw(st.sampled_from([0.9, 0.99])),
        eps=draw(st.sampled_from([1e-8, 1e-6])),
        weight_decay=draw(_DECAY),
        momentum=draw(st.sampled_from([0.0, 0.9])),
        centered=draw(st.booleans()),
        maximize=draw(st.booleans()),
        foreach=draw(st.booleans()),
    )


@st.composite
def _adagrad(draw: Any, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(
        params,
        lr=draw(_LR),
        lr_decay=draw(st.sampled_from([0.0, 1e-3])),
        weight_decay=draw(_DECAY),
        initial_accumulator_value=draw(st.sampled_from([0.0, 0.1])),
        eps=draw(st.sampled_from([1e-10, 1e-6])),
        maximize=draw(st.booleans()),
        foreach=draw(st.booleans()),
    )


_BETAS = st.tuples(st.sampled_from([0.8, 0.9]), st.sampled_from([0.99, 0.999]))


@st.composite
def _adam_variant(draw: Any, params: list[torch.Tensor], family: str) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {
        "lr": draw(_LR),
        "betas": draw(_BETAS),
        "weight_decay": draw(_DECAY),
        "maximize": draw(st.booleans()),
        "foreach": draw(st.booleans()),
    }
    if family != "Adamax":
        kwargs["decoupled_weight_decay"] = draw(st.booleans())
    if family == "NAdam":
        kwargs["momentum_decay"] = draw(st.sampled_from([4e-3, 1e-2]))
    return getattr(torch.optim, family)(params, **kwargs)  # type: ignore[no-any-return]


@st.composite
def _adaptive(draw: Any, params: list[torch.Tensor], family: str) -> torch.optim.Optimizer:
    common = {"maximize": draw(st.booleans()), "foreach": draw(st.booleans())}
    if family == "Adadelta":
        return torch.optim.Adadelta(
            params, lr=draw(st.sampled_from([0.1, 1.0])), weight_decay=draw(_DECAY), **common
        )
    if family == "Rprop":
        return torch.optim.Rprop(params, lr=draw(_LR), **common)
    return torch.optim.ASGD(
        params,
        lr=draw(_LR),
        t0=draw(st.sampled_from([1.0, 1e6])),
        weight_decay=draw(_DECAY),
        **common,
    )


def optimizers(params: nn.Module | Iterable[torch.Tensor]) -> st.SearchStrategy[Any]:
    """Configured ``torch.optim`` optimizers over ``params`` (a module: its trainable ones).

    The families ``gradscope.check_step`` has reference rules for: SGD (momentum, dampening,
    nesterov), Adam and AdamW (amsgrad), NAdam, RAdam (decoupled decay), Adamax, RMSprop
    (centered, momentum), Adagrad (lr decay), Adadelta, Rprop and ASGD, each with weight decay
    where it has one, maximize, and the for-loop or foreach implementation.
    """
    if isinstance(params, nn.Module):
        chosen: list[torch.Tensor] = [p for p in params.parameters() if p.requires_grad]
    elif isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        raise GradscopeError(
            f"optimizers() takes a module or an iterable of parameters, not {describe(params)}"
        )
    else:
        chosen = list(params)
    if not chosen:
        raise GradscopeError("optimizers(): there are no trainable parameters to optimize")
    return st.one_of(
        _sgd(chosen),
        _adam(chosen, False),
        _adam(chosen, True),
        _rmsprop(chosen),
        _adagrad(chosen),
        *(_adam_variant(chosen, family) for family in ("NAdam", "RAdam", "Adamax")),
        *(_adaptive(chosen, family) for family in ("Adadelta", "Rprop", "ASGD")),
    )
