"""What the recorder holds and installs, as the watch shows it: the model (strongly while open,
weakly once closed), its class name, ``closed``, each pass record's ``shapes`` and
``synchronised``, and the module-tagging hooks ``tag_modules`` asks for.

Written against mutants of ``gradscope/_watch/recorder.py`` that the record tests let live (see
``tools/mutate.py``). Oracles: torch's own hook dictionaries (``_forward_pre_hooks``,
``_forward_hooks``), weak references and the garbage collector, the parameters' own shapes.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import gradscope
from gradscope._graph.module_tags import module_path_of


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


class _CompiledStandIn(nn.Module):
    """Wraps a model the way torch.compile's ``OptimizedModule`` does, in ``_orig_mod`` (the
    real one takes ~10 s to import here; ``test_watch.py`` watches a real compiled model)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(x)  # type: ignore[no-any-return]


def _hook_counts(net: nn.Module) -> list[tuple[int, int]]:
    """(forward pre-hooks, forward hooks) on each child of ``net``, from torch's own dicts."""
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in net.children()]


@pytest.mark.parametrize("tag_modules", [True, False])
def test_module_tagging_hooks_are_installed_exactly_when_asked(tag_modules: bool) -> None:
    net = _net()
    x = torch.randn(2, 4)
    assert _hook_counts(net) == [(0, 0)] * 3
    with gradscope.watch(net, tag_modules=tag_modules, check_forward=False) as w:
        assert _hook_counts(net) == [(1, 1) if tag_modules else (0, 0)] * 3
        out = net(x)
        # the last node the forward made (addmm) belongs to the last Linear, "2", when tagged
        assert module_path_of(out.grad_fn) == ("2" if tag_modules else None)
        out.sum().backward()
    assert w.errors == []
    assert _hook_counts(net) == [(0, 0)] * 3  # close() removed them


def test_a_dynamo_wrapper_gets_no_module_tagging_and_is_named_by_its_model() -> None:
    net = _net()
    wrapper = _CompiledStandIn(net)
    with gradscope.watch(wrapper, check_forward=False) as w:
        assert _hook_counts(net) == [(0, 0)] * 3  # no tagging under torch.compile
        assert w.model_name == "Sequential"  # unwrapped
        assert w.module is wrapper
        wrapper(torch.randn(2, 4)).sum().backward()
    assert set(w.last) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_an_open_watch_holds_a_wrapped_model_and_a_closed_one_only_weakly() -> None:
    w = gradscope.watch(nn.DataParallel(_net()))  # the user keeps no reference to the wrapper
    gc.collect()
    assert isinstance(w.module, nn.DataParallel)
    assert w.model_name == "Sequential" and w.closed is False
    wrapper = w.module
    w.close()
    assert w.closed is True
    assert w.module is wrapper  # still found while the user holds it
    gone = weakref.ref(wrapper)
    del wrapper
    gc.collect()
    assert gone() is None and w.module is None


def test_a_record_on_one_process_has_every_shape_and_no_synchronisation() -> None:
    net = _net()
    net[0].bias.requires_grad_(False)
    with gradscope.watch(net) as w:
        net(torch.randn(2, 4)).sum().backward()
    shapes = {n: tuple(p.shape) for n, p in net.named_parameters()}
    assert shapes == {"0.weight": (3, 4), "0.bias": (3,), "2.weight": (2, 3), "2.bias": (2,)}
    assert w.last.shapes == shapes  # frozen parameters included
    assert w.last.frozen == ["0.bias"] and w.last.missing == []
    assert w.last.synchronised is None
