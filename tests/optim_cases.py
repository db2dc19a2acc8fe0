"""Hypothesis strategies shared by the optimizer-check tests: optimizers, options, parameters."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import optim

_lr = st.sampled_from([1e-3, 1e-2, 0.1, 0.5])
_wd = st.sampled_from([0.0, 1e-2, 0.1])
_maximize = st.booleans()


@st.composite
def _sgd(draw: st.DrawFn) -> dict[str, Any]:
    kw = {
        "lr": draw(_lr),
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.9])),
        "dampening": draw(st.sampled_from([0.0, 0.3])),
        "weight_decay": draw(_wd),
        "nesterov": draw(st.booleans()),
        "maximize": draw(_maximize),
    }
    if kw["nesterov"]:  # torch requires momentum > 0 and no dampening for Nesterov
        kw["momentum"], kw["dampening"] = max(kw["momentum"], 0.5), 0.0
    return kw


_betas = st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.99, 0.999]))
_eps = st.sampled_from([1e-8, 1e-3])
_adam = st.fixed_dictionaries(
    {
        "lr": _lr,
        "betas": _betas,
        "eps": _eps,
        "weight_decay": _wd,
        "amsgrad": st.booleans(),
        "maximize": _maximize,
    }
)
_nadam = st.fixed_dictionaries(
    {
        "lr": _lr,
        "betas": _betas,
        "eps": _eps,
        "weight_decay": _wd,
        "momentum_decay": st.sampled_from([4e-3, 6e-3, 0.1]),
        "decoupled_weight_decay": st.booleans(),
        "maximize": _maximize,
    }
)
_radam = st.fixed_dictionaries(
    {
        "lr": _lr,
        "betas": _betas,
        "eps": _eps,
        "weight_decay": _wd,
        "decoupled_weight_decay": st.booleans(),
        "maximize": _maximize,
    }
)
_adamax = st.fixed_dictionaries(
    {"lr": _lr, "betas": _betas, "eps": _eps, "weight_decay": _wd, "maximize": _maximize}
)
_rmsprop = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 1e-2]),
        "alpha": st.sampled_from([0.9, 0.99]),
        "eps": _eps,
        "weight_decay": _wd,
        "momentum": st.sampled_from([0.0, 0.9]),
        "centered": st.booleans(),
        "maximize": _maximize,
    }
)
_adagrad = st.fixed_dictionaries(
    {
        "lr": _lr,
        "lr_decay": st.sampled_from([0.0, 0.01]),
        "weight_decay": _wd,
        "initial_accumulator_value": st.sampled_from([0.0, 0.1]),
        "eps": st.sampled_from([1e-10, 1e-3]),
        "maximize": _maximize,
    }
)
_adadelta = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([0.1, 1.0]),
        "rho": st.sampled_from([0.9, 0.95]),
        "eps": st.sampled_from([1e-6, 1e-3]),
        "weight_decay": _wd,
        "maximize": _maximize,
    }
)
_rprop = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 1e-2, 0.1]),
        "etas": st.sampled_from([(0.5, 1.2), (0.3, 1.5)]),
        "step_sizes": st.sampled_from([(1e-6, 50.0), (1e-4, 0.05)]),
        "maximize": _maximize,
    }
)
_asgd = st.fixed_dictionaries(
    {
        "lr": st.sampled_from([1e-3, 1e-2, 0.1]),
        "lambd": st.sampled_from([1e-4, 0.1]),
        "alpha": st.sampled_from([0.75, 0.5]),
        "t0": st.sampled_from([1e6, 5.0]),
        "weight_decay": _wd,
        "maximize": _maximize,
    }
)

# name -> (class, its hyperparameter strategy, whether torch 2.13 has fused=True for it on CPU)
OPTIMIZERS: dict[str, tuple[type[optim.Optimizer], st.SearchStrategy[dict[str, Any]], bool]] = {
    "SGD": (optim.SGD, _sgd(), True),
    "Adam": (optim.Adam, _adam, True),
    "AdamW": (optim.AdamW, _adam, True),
    "NAdam": (optim.NAdam, _nadam, False),
    "RAdam": (optim.RAdam, _radam, False),
    "Adamax": (optim.Adamax, _adamax, False),
    "RMSprop": (optim.RMSprop, _rmsprop, False),
    "Adagrad": (optim.Adagrad, _adagrad, True),
    "Adadelta": (optim.Adadelta, _adadelta, False),
    "Rprop": (optim.Rprop, _rprop, False),
    "ASGD": (optim.ASGD, _asgd, False),
}

shapes = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3
)
dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def implementation(draw: st.DrawFn, fused_ok: bool) -> dict[str, bool]:
    choices = [{"foreach": False}, {"foreach": True}] + ([{"fused": True}] if fused_ok else [])
    return draw(st.sampled_from(choices))


def make_params(shape_list: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in shape_list]


def set_random_grads(params: list[torch.nn.Parameter], step: int) -> None:
    """Gradients whose scale sweeps 1e-3 .. 10 so small and large updates both occur."""
    scale = 10.0 ** (step % 5 - 3)
    for p in params:
        p.grad = torch.randn_like(p) * scale
