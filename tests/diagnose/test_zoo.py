"""The acceptance test of the diagnosis: every bug of the zoo named, every healthy run clean.

Each script in ``zoo/`` trains a small real model for a few steps with one classic mistake; the
top finding of ``watch.diagnose()`` must have the right kind and name the right parameters or
module. The same scripts with the mistake fixed are the healthy zoo: no error or warning there.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import zoo

import gradscope


def _script(name: str) -> ModuleType:
    return importlib.import_module(f"zoo.{name}")


def _text(finding: gradscope.Finding) -> str:
    return f"{finding.message} {finding.evidence_text()}"


@pytest.mark.parametrize("name", zoo.SCRIPTS)
def test_the_top_finding_names_the_mistake(name: str) -> None:
    script = _script(name)
    expect: zoo.Expect = script.EXPECT
    diagnosis = script.train(mistake=True).diagnose()
    assert not diagnosis.ok, str(diagnosis)
    top = diagnosis[0]
    assert top.kind == expect.kind, str(diagnosis)
    assert top.severity in ("error", "warning")
    missing = expect.params - set(top.params)
    assert not missing, f"not named: {sorted(missing)}\n{diagnosis}"
    if expect.module is not None:
        assert top.module == expect.module, str(diagnosis)
    for word in expect.words:
        assert word in _text(top), f"{word!r} not said\n{diagnosis}"
    assert top.message and top.hint


@pytest.mark.parametrize("name", zoo.SCRIPTS)
def test_the_same_model_trained_correctly_is_healthy(name: str) -> None:
    diagnosis = _script(name).train(mistake=False).diagnose()
    assert diagnosis.ok, str(diagnosis)


def test_the_zoo_has_one_script_per_classic_mistake() -> None:
    assert len(zoo.SCRIPTS) >= 15
    kinds = {_script(name).EXPECT.kind for name in zoo.SCRIPTS}
    assert kinds >= {
        "no_gradient",
        "grads_accumulating",
        "not_in_optimizer",
        "not_updated",
        "nonfinite_forward",
        "nonfinite_backward",
        "update_ratio",
        "vanishing",
        "exploding",
        "dead_units",
        "loss_scale_collapse",
        "clipping_always",
    }
