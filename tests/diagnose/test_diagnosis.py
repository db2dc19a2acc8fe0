"""The Diagnosis and Finding types, the order of findings, what is said when something cannot
be checked, and the diagnosis in the report, the summary and a notebook."""

from __future__ import annotations

from pathlib import Path

import _chromium
import pytest
import torch
from torch import nn

import gradscope
from gradscope._diagnose.finding import KINDS


def _detached(steps: int = 3, **options: object) -> gradscope.Watch:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.forward = lambda x: net[2](net[1](net[0](x)).detach())  # type: ignore[method-assign]
    with gradscope.watch(net, optimizer=opt, **options) as w:  # type: ignore[arg-type]
        for _ in range(steps):
            opt.zero_grad()
            net(torch.randn(3, 4)).sum().backward()
            opt.step()
    return w


def test_a_finding_reads_as_a_short_report() -> None:
    f = gradscope.Finding(
        "update_ratio",
        "warning",
        "Too big.",
        "Lower the lr.",
        params=("fc.weight",),
        module="fc",
        passes=(1, 2, 3, 7),
        evidence={"ratio": 0.51234, "lrs": [1.0, 2.0]},
    )
    assert str(f) == (
        "warning update_ratio: Too big.\n"
        "  where: fc.weight; module 'fc'; passes 1-3, 7\n"
        "  evidence: ratio: 0.512; lrs: [1, 2]\n"
        "  fix: Lower the lr."
    )
    assert repr(f) == "Finding('update_ratio', 'warning', params=('fc.weight',), module='fc')"


def test_a_diagnosis_is_an_ordered_sequence_with_ok_and_kinds() -> None:
    d = _detached().diagnose()
    assert isinstance(d, gradscope.Diagnosis)
    assert not d.ok and len(d.errors) == 1 and d.kinds[0] == "no_gradient"
    assert d[0] is d.findings[0] and list(d) == list(d.findings)
    assert d.of_kind("no_gradient") == [d[0]]
    with pytest.raises(ValueError, match="unknown finding kind 'no_grad'"):
        d.of_kind("no_grad")
    assert d.headline().startswith("gradscope diagnosis of Sequential (3 backward passes, 3 ")
    assert repr(d) == "<gradscope.Diagnosis: 1 error>"
    assert all(f.kind in KINDS for f in d)


def test_info_findings_keep_a_diagnosis_ok() -> None:
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.bias.register_hook(lambda g: g * 0)  # a parameter whose gradient is always 0
    with gradscope.watch(net, optimizer=opt) as w:
        for _ in range(4):
            opt.zero_grad()
            net(torch.randn(2, 3)).pow(2).mean().backward()
            opt.step()
    d = w.diagnose()
    assert d.ok and [(f.kind, f.severity, f.params) for f in d] == [
        ("not_updated", "info", ("bias",))
    ]


def test_without_an_optimizer_it_says_what_it_could_not_check() -> None:
    net = nn.Linear(3, 1)
    with gradscope.watch(net) as w:
        net(torch.randn(2, 3)).sum().backward()
    d = w.diagnose()
    assert d.ok and d.steps is None
    needs = {k for k, why in d.unchecked.items() if why == "needs watch(net, optimizer=opt)"}
    assert needs == {
        "not_in_optimizer",
        "frozen",
        "not_updated",
        "update_ratio",
        "clipping_always",
        "skipped_steps",
    }
    assert str(d).endswith(
        "not checked: not_in_optimizer, frozen, skipped_steps, not_updated, update_ratio, "
        "clipping_always (needs watch(net, optimizer=opt)); loss_scale_collapse (no GradScaler "
        "given: watch(net, scaler=scaler)); dead_units (needs 10 recorded passes in a row, 1 so "
        "far)"
    )


def test_keep_none_and_every_still_diagnose() -> None:
    d = _detached(steps=4, keep="none").diagnose()
    assert d[0].kind == "no_gradient" and "grads_accumulating" in d.unchecked
    d = _detached(steps=4, every=2).diagnose()
    assert d[0].kind == "no_gradient" and d.passes == 2


def test_before_any_pass_the_diagnosis_is_empty_and_says_why_checks_wait() -> None:
    w = gradscope.watch(nn.Linear(2, 1))
    d = w.diagnose()
    assert d.ok and len(d) == 0 and d.passes == 0
    w.close()


def test_summary_ends_with_the_findings_and_a_given_record_does_not() -> None:
    w = _detached()
    text = str(w.summary())
    assert text.startswith("gradscope: backward pass 3")
    assert text.endswith(str(w.diagnose()))
    assert "diagnosis" not in str(w.summary(w.records[0]))


def test_the_report_opens_with_the_findings(tmp_path: Path) -> None:
    w = _detached()
    page = w.report(tmp_path / "r.html").read_text()
    assert page.index("<h2>Findings</h2>") < page.index('<ul class="alerts">')
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Parameters</h2>")
    assert 'class="finding error"' in page and "no_gradient" in page
    assert "torch.Tensor.detach" in page


def test_names_that_need_escaping_are_shown_safely(tmp_path: Path) -> None:
    net = nn.Module()
    net.register_module("a<b>\x00", nn.Linear(2, 2))
    net.register_module("c", nn.Linear(2, 1))
    net.forward = lambda x: net.c(net.get_submodule("a<b>\x00")(x).detach())  # type: ignore[method-assign]
    with gradscope.watch(net) as w:
        net(torch.randn(1, 2)).sum().backward()
    page = w.report(tmp_path / "r.html").read_text()
    assert "a&lt;b&gt;\\x00.weight" in page and "a<b>" not in page
    html = w.diagnose()._repr_html_()
    assert "a&lt;b&gt;\\x00.weight" in html


def test_a_diagnosis_in_a_notebook() -> None:
    html = _detached().diagnose()._repr_html_()
    assert html.startswith('<div class="diagnosis">') and "<script" not in html
    assert "1. <span" in html and "no_gradient" in html and "Not checked:" in html
    healthy = gradscope.Diagnosis((), model="Net", passes=2)._repr_html_()
    assert "No error, warning or note" in healthy


@pytest.mark.skipif(_chromium.chromium() is None, reason="needs headless Chromium")
def test_the_findings_section_renders_in_a_browser_without_errors(tmp_path: Path) -> None:
    page = _detached().report(tmp_path / "report.html")
    visit = _chromium.visit(
        page,
        expressions={
            "findings": "document.querySelectorAll('.finding').length",
            "first": "document.querySelector('h2').textContent",
            "height": "document.querySelector('.finding.error').getBoundingClientRect().height",
        },
    )
    assert visit.loaded and not visit.errors
    assert visit.requests == [page.resolve().as_uri()]  # the page itself, nothing else
    assert visit.evaluated["first"] == "Findings"
    assert visit.evaluated["findings"] == 1 and visit.evaluated["height"] > 40
    (tmp_path / "report.png").write_bytes(visit.screenshot)  # kept for a look by hand


def _half_overflowing(scaler: bool) -> gradscope.Watch:
    """Every second batch makes the gradient overflow; its step is skipped (by GradScaler, or
    by a hand-written guard)."""
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    amp = torch.amp.GradScaler("cpu", init_scale=2.0**16) if scaler else None
    with gradscope.watch(net, optimizer=opt, scaler=amp) as w:
        for i in range(10):
            opt.zero_grad()
            x = torch.randn(8, 4) * (1e36 if i % 2 else 1.0)
            loss = net(x).mean() if amp is None else amp.scale(net(x).mean())
            if amp is None:
                loss = loss * 2.0**16  # the gradient overflows on the big batches
            loss.backward()
            if amp is not None:
                amp.step(opt)
                amp.update()
            elif all(torch.isfinite(p.grad).all() for p in net.parameters()):
                opt.step()
    return w


def test_skipped_steps_under_gradscaler_with_the_scale_settling() -> None:
    d = _half_overflowing(scaler=True).diagnose()
    (found,) = d.of_kind("skipped_steps")
    assert found.severity == "warning" and found.passes == (2, 4, 6, 8, 10)
    # the scale each pass ran at: halved after each skip (pass 10 ran before its own halving)
    assert found.evidence["loss scale"] == "65536 -> 4096"
    assert not d.of_kind("loss_scale_collapse") and d.steps == 5


def test_skipped_steps_seen_from_the_optimizer_alone() -> None:
    d = _half_overflowing(scaler=False).diagnose()
    (found,) = d.of_kind("skipped_steps")
    assert found.passes == (2, 4, 6, 8, 10)
    assert found.evidence == {"skipped": "5 of 10"}
    assert "pass it to watch(net, scaler=scaler)" in found.hint
