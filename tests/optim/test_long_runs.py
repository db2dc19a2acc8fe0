"""torch's own optimizers never drift into a false alarm: every configuration of torch's
optimizer test inputs (``optim_db``) for the families with a built-in rule, for-loop, foreach
and fused, 110 steps under verify_optimizer with the state checked, while lr, betas and momentum
change at every step and lr starts at 0 (a warmup).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn, optim

import gradscope

STEPS = 110

# Read in a subprocess: importing torch.testing._internal changes the warnings filters.
_DUMP = """
import json, torch
from torch.testing._internal.common_optimizers import optim_db
out = []
for info in optim_db:
    for i in info.optim_inputs_func(device="cpu", dtype=torch.float32):
        kw = {k: {"tensor": float(v)} if isinstance(v, torch.Tensor) else v
              for k, v in i.kwargs.items()}
        out.append([info.optim_cls.__name__, i.desc, kw, list(info.supported_impls)])
print(json.dumps(out))
"""


def _torch_inputs() -> list[tuple[str, str, dict[str, Any], list[str]]]:
    done = subprocess.run(
        [sys.executable, "-c", _DUMP], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, f"torch's optim_db needs expecttest (dev extra):\n{done.stderr}"
    return [tuple(row) for row in json.loads(done.stdout)]  # type: ignore[misc]


_BUILT_IN = {"SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adamax", "RMSprop", "Adagrad"}
_BUILT_IN |= {"Adadelta", "Rprop", "ASGD"}
CASES = []
for _name, _desc, _kwargs, _impls in _torch_inputs():
    if _name not in _BUILT_IN:
        continue
    for _impl in ["for-loop"] + [i for i in _impls if i in ("foreach", "fused")]:
        CASES.append(pytest.param(_name, _kwargs, _impl, id=f"{_name}-{_desc}-{_impl}"))


def _kwargs(raw: dict[str, Any], impl: str) -> dict[str, Any]:
    kwargs = {
        k: torch.tensor(v["tensor"])
        if isinstance(v, dict)
        else tuple(v)
        if isinstance(v, list)
        else v
        for k, v in raw.items()
    }
    if impl == "fused":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = impl == "foreach"
    return kwargs


def _jiggle(opt: optim.Optimizer, step: int) -> None:
    """A schedule on every hyperparameter: lr from 0 (warmup), betas and momentum move."""
    for group in opt.param_groups:
        base = group.setdefault("base", float(group["lr"]))
        scale = min(1.0, step / 5) * (1 + 0.3 * ((step * 7) % 5 - 2) / 2)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(base * scale)
        else:
            group["lr"] = base * scale
        if "betas" in group:
            b1, b2 = group.setdefault("base_betas", tuple(float(b) for b in group["betas"]))
            group["betas"] = (b1 * (1 - 0.05 * (step % 3)), b2)
        if group.get("momentum"):
            group["momentum"] = group.setdefault("base_mu", group["momentum"]) * (
                1 - 0.05 * (step % 4)
            )
        if "rho" in group:
            group["rho"] = group.setdefault("base_rho", group["rho"]) * (1 - 0.01 * (step % 2))


@pytest.mark.parametrize(("name", "raw", "impl"), CASES)
def test_torch_optimizer_passes_110_scheduled_steps(
    name: str, raw: dict[str, Any], impl: str
) -> None:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(shape)) for shape in [(4, 3), (5,), ()]]
    opt = getattr(optim, name)(params, **_kwargs(raw, impl))
    with gradscope.verify_optimizer(opt, on_mismatch="raise", max_zero_lr_steps=None) as v:
        for step in range(STEPS):
            _jiggle(opt, step)
            scale = 10.0 ** (step % 5 - 3)
            for p in params:
                p.grad = torch.randn_like(p) * scale
            opt.step()
    assert len(v.reports) == STEPS and v.ok
    assert all(r.state_checked for r in v.reports)
    assert any("lr is 0" in n for n in v.reports[0].notes)


def test_float64_and_named_parameters_for_every_family() -> None:
    for name in sorted(_BUILT_IN):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
        kwargs = {"lr": 1e-3} if name not in ("Adadelta",) else {}
        opt = (
            getattr(optim, name)(net.parameters(), weight_decay=0.01, **kwargs)
            if name not in ("Rprop",)
            else optim.Rprop(net.parameters())
        )
        x = torch.randn(5, 8, dtype=torch.float64)
        with gradscope.verify_optimizer(opt, params=net, on_mismatch="raise") as v:
            for step in range(STEPS):
                _jiggle(opt, step + 1)
                opt.zero_grad()
                net(x).pow(2).mean().backward()
                opt.step()
        assert v.ok and len(v.reports) == STEPS, name


def test_sparse_adam_with_adam_on_the_rest() -> None:
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, sparse=True)
    head = nn.Linear(8, 3)
    net = nn.ModuleDict({"emb": emb, "head": head})
    sparse = optim.SparseAdam(emb.parameters(), lr=1e-2)
    dense = optim.Adam(head.parameters(), lr=1e-2)
    with gradscope.verify_optimizer([sparse, dense], params=net, on_mismatch="raise") as v:
        for _ in range(STEPS):
            sparse.zero_grad()
            dense.zero_grad()
            head(emb(torch.randint(0, 50, (6,)))).pow(2).mean().backward()
            sparse.step()
            dense.step()
    assert len(v.reports) == 2 * STEPS and v.ok
    assert {r.optimizer for r in v.reports} == {"SparseAdam", "Adam"}
