"""StepReport: the fixed-width table, every failure listed once, and the not-ready guard."""

from __future__ import annotations

import doctest

import pytest

import gradscope
from gradscope._optim import step_report as _step_report
from gradscope._optim.step_report import ParamCheck, StepReport


def _report() -> StepReport:
    report = StepReport(optimizer="SGD", step=3, reference="the SGD rule")
    report.params = [
        ParamCheck("conv1.weight", 0, True, "ok", 1e-9, 1e-6, 2e-7),
        ParamCheck(
            "fc3.a.very.long.parameter.name",
            1,
            True,
            "FAIL",
            1e-3,
            9.0,
            2e-7,
            ("it moved 10 times as far",),
        ),
        ParamCheck("fc3.bias", 1, True, "FAIL", 2e-3, 9.0, 2e-7, ("it moved 10 times as far",)),
        ParamCheck("head", None, False, "FAIL", reasons=("it is in no param group",)),
        ParamCheck("frozen", 0, False, "skipped"),
    ]
    report._ready = True
    return report


def test_table_is_fixed_width_with_one_row_per_parameter() -> None:
    lines = _report().table().splitlines()
    assert lines[0].split() == [
        "parameter",
        "group",
        "max",
        "abs",
        "diff",
        "max",
        "rel",
        "diff",
        "tolerance",
        "changed",
        "state",
        "verdict",
    ]
    assert set(lines[1]) == {"-"} and len(lines) == 7
    assert len({len(line) for line in [lines[0], *lines[2:]]}) == 1  # every row equally wide
    assert lines[2].split() == [
        "conv1.weight",
        "0",
        "1.00e-09",
        "1.00e-06",
        "2.00e-07",
        "yes",
        "-",
        "ok",
    ]
    assert lines[5].split() == ["head", "-", "-", "-", "-", "no", "-", "FAIL"]


def test_failures_ok_and_lookup() -> None:
    report = _report()
    assert not report.ok
    assert [p.name for p in report.failures] == [
        "fc3.a.very.long.parameter.name",
        "fc3.bias",
        "head",
    ]
    assert report["frozen"].verdict == "skipped"
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        report["nope"]


def test_raise_lists_every_failure_grouping_shared_reasons() -> None:
    with pytest.raises(gradscope.StepMismatch) as caught:
        _report().raise_if_failed()
    text = str(caught.value)
    assert text.startswith(
        "step 3 of SGD: checked against the SGD rule (parameters only): 3 of 5 parameters FAILED"
    )
    assert text.count("it moved 10 times as far") == 1
    assert "fc3.bias (param group 1): max abs diff 2.00e-03 (tolerance 2.00e-07), 9.00e+00" in text
    assert "head (in no param group)" in text


def test_step_wide_problem_fails_the_report_even_with_no_parameter_failing() -> None:
    report = StepReport(optimizer="Adam", reference=None, problems=["every .grad was None"])
    report.params = [ParamCheck("w", 0, False, "skipped")]
    report._ready = True
    assert not report.ok and report.failures == []
    assert "values NOT checked" in report.headline() and report.headline().endswith("FAILED")
    assert "problem: every .grad was None" in str(report)


def test_unfilled_report_says_so() -> None:
    report = StepReport()
    assert "not filled in yet" in str(report)
    with pytest.raises(gradscope.GradscopeError, match="read it after the block"):
        report.raise_if_failed()


def test_docstring_example_runs() -> None:
    assert doctest.testmod(_step_report).failed == 0
