"""GradscopeCallback in a real Lightning Trainer on CPU, checked against plain-PyTorch hooks,
Lightning's own grad_norm, TensorBoard's event reader and the report in a browser."""

from __future__ import annotations

import csv
import gc
import math
import weakref
from pathlib import Path
from typing import Any

import _chromium
import lightning.pytorch as L
import pytest
import tb_read
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from lit import GradNormHooks, LitLeNet, PassEnds, loader, trainer

import gradscope
from gradscope import GradscopeError
from gradscope.integrations import _common
from gradscope.integrations.lightning import GradscopeCallback

PARAMS = [f"net.{n}" for n, _ in gradscope.LeNet().named_parameters()]


class LightningNorms(L.Callback):
    """Lightning's own per-parameter norms (``grad_norm``), before each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        norms = grad_norm(pl_module, norm_type=2)
        prefix = "grad_2.0_norm/"
        self.steps.append(
            {k[len(prefix) :]: float(v) for k, v in norms.items() if k.startswith(prefix)}
        )


def _fit(
    tmp_path: Path, callback: GradscopeCallback, **kwargs: Any
) -> tuple[LitLeNet, GradNormHooks, L.Trainer]:
    model = LitLeNet()
    hooks = GradNormHooks(model)
    extra = kwargs.pop("callbacks", [])
    t = trainer(tmp_path, [callback, PassEnds(hooks), *extra], **kwargs)
    t.fit(model, loader(kwargs.get("max_steps", 5) * kwargs.get("accumulate_grad_batches", 1)))
    hooks.remove()
    return model, hooks, t


def _assert_records_match(w: gradscope.Watch, passes: list[dict[str, float]]) -> None:
    assert len(w.records) == len(passes)
    for record, oracle in zip(w.records, passes, strict=True):
        assert set(record) == set(oracle) == set(PARAMS)
        for name, norm in oracle.items():
            assert record[name].recorded.norm == pytest.approx(norm, rel=1e-6)


@pytest.mark.skipif(_chromium.chromium() is None, reason="chromium is not installed")
def test_fit_logs_what_plain_hooks_see_to_tensorboard_and_writes_the_report(tmp_path: Path) -> None:
    callback = GradscopeCallback(histograms=True)
    peer = LightningNorms()
    logger = TensorBoardLogger(tmp_path, name="tb")
    model, hooks, t = _fit(tmp_path, callback, logger=logger, callbacks=[peer])
    w = callback.watch
    assert w.closed and w.model_name == "LitLeNet"
    _assert_records_match(w, hooks.passes)  # one backward per step here
    assert callback.optimizers == t.optimizers and len(callback.optimizers) == 1
    scalars = tb_read.scalars(Path(logger.log_dir))
    # Lightning logs a step's loss under the number of steps done before it: so does gradscope.
    assert sorted(scalars["loss"]) == list(range(5))
    for name in PARAMS:
        logged = scalars[f"gradscope/grad_norm/{name}"]
        assert sorted(logged) == list(range(5))
        for step in range(5):
            assert logged[step] == pytest.approx(hooks.passes[step][name], rel=1e-6)
            assert logged[step] == pytest.approx(peer.steps[step][name], rel=1e-6)
            assert logged[step] == pytest.approx(model.before_step[step][name], rel=1e-6)
        assert set(scalars[f"gradscope/nonfinite/{name}"].values()) == {0.0}
    histograms = tb_read.histograms(Path(logger.log_dir))
    assert set(histograms) == {f"gradscope/grad/{n}" for n in PARAMS}
    assert histograms["gradscope/grad/net.fc3.bias"][4].num == 10
    # The report: in the logger's folder, opened in a browser, one row per parameter whose
    # norm is the last pass's.
    assert callback.report_path == Path(t.log_dir) / "report.html"
    visit = _chromium.visit(
        callback.report_path,
        expressions={
            "norms": (
                "Array.prototype.map.call(document.querySelectorAll('#params tbody tr'),"
                "function(r){return [r.cells[0].textContent, parseFloat(r.cells[2]"
                ".getAttribute('data-v'))];})"
            ),
            "title": "document.title",
        },
    )
    assert visit.loaded and visit.errors == []
    assert visit.requests == [callback.report_path.resolve().as_uri()]
    assert visit.evaluated["title"] == "gradscope report: LitLeNet"
    shown = dict(visit.evaluated["norms"])
    assert set(shown) == set(PARAMS)
    for name in PARAMS:
        assert shown[name] == pytest.approx(hooks.passes[-1][name], rel=1e-6)


def test_accumulation_and_clipping_log_the_accumulated_norm_before_clipping(tmp_path: Path) -> None:
    callback = GradscopeCallback()
    logger = TensorBoardLogger(tmp_path, name="tb")
    clipped: list[float] = []

    class AfterStep(L.Callback):
        """What optimizer.step() used, read by torch's own step post-hook (Lightning runs the
        training step, backward and clipping inside step(closure), after any pre-hook)."""

        def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            def read(optimizer: Any, args: Any, kwargs: Any) -> None:
                norms = [p.grad.norm() for p in pl_module.parameters()]
                clipped.append(float(torch.linalg.vector_norm(torch.stack(norms))))

            trainer.optimizers[0].register_step_post_hook(read)

    model, hooks, _ = _fit(
        tmp_path,
        callback,
        logger=logger,
        accumulate_grad_batches=2,
        gradient_clip_val=0.05,
        callbacks=[AfterStep()],
    )
    w = callback.watch
    _assert_records_match(w, hooks.passes)
    assert len(w.records) == 10  # two backward passes per optimizer step
    scalars = tb_read.scalars(Path(logger.log_dir))
    for step in range(5):
        second = hooks.passes[2 * step + 1]  # the window's last pass: the accumulated .grad
        for name in PARAMS:
            assert scalars[f"gradscope/grad_norm/{name}"][step] == pytest.approx(
                second[name], rel=1e-6
            )
            assert second[name] == pytest.approx(model.before_step[step][name], rel=1e-6)
        total = math.sqrt(sum(v**2 for v in second.values()))
        assert total > 0.05  # clipping had work to do ...
        assert clipped[step] == pytest.approx(0.05, rel=1e-4)  # ... and did it after the record
    # The accumulated gradient is the sum of the window's two micro-batch gradients: the
    # record's delta of the second pass is what that pass added.
    first, second = w.records[-2], w.records[-1]
    assert second["net.fc3.bias"].recorded.norm != first["net.fc3.bias"].recorded.norm


def test_bf16_mixed_precision_on_cpu(tmp_path: Path) -> None:
    callback = GradscopeCallback()
    model, hooks, _ = _fit(tmp_path, callback, precision="bf16-mixed", max_steps=3, logger=False)
    assert set(model.output_dtypes) == {torch.bfloat16}  # autocast did run the forward in bf16
    _assert_records_match(callback.watch, hooks.passes)
    assert all(r["net.conv1.weight"].shape == (6, 1, 5, 5) for r in callback.watch.records)


def test_other_loggers_get_log_metrics(tmp_path: Path) -> None:
    callback = GradscopeCallback(log_every_n_steps=2)
    logger = CSVLogger(tmp_path, name="csv")
    _, hooks, _ = _fit(tmp_path, callback, logger=logger)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("gradscope/grad_norm/net.fc1.weight")]
    # every second step: steps 1 and 3 (Lightning's rule: (step + 1) % n == 0)
    assert [int(r["step"]) for r in rows] == [1, 3]
    for row in rows:
        step = int(row["step"])
        assert float(row["gradscope/grad_norm/net.fc1.weight"]) == pytest.approx(
            hooks.passes[step]["net.fc1.weight"], rel=1e-6
        )
        assert float(row["gradscope/nonfinite/net.fc1.weight"]) == 0


def test_watch_options_and_the_older_pytorch_lightning_trainer(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    callback = GradscopeCallback(include="net.fc*", every=2, keep="none", report="sub/gs.html")

    class OldStyle(pl.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.net = gradscope.LeNet()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    model = OldStyle()
    t = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=[callback],
    )
    t.fit(model, loader(4))
    w = callback.watch
    assert [r.index for r in w.records] == [1, 3]  # every second pass, as watch(every=2)
    assert set(w.last) == {n for n in PARAMS if n.startswith("net.fc")}
    assert w.last["net.fc1.weight"].after is None  # keep="none"
    assert callback.report_path == tmp_path / "sub" / "gs.html"
    assert callback.report_path.read_text().startswith("<!DOCTYPE html>")


def test_the_trainer_optimizer_reaches_a_watch_that_takes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    real = _common.watch

    def watch_with_optimizer(module: Any, *, optimizer: Any = None, **options: Any) -> Any:
        seen.append(optimizer)
        return real(module, **options)

    callback = GradscopeCallback()
    monkeypatch.setattr(_common, "watch", watch_with_optimizer)
    _, _, t = _fit(tmp_path, callback, max_steps=1, logger=False)
    assert seen == [t.optimizers[0]]


class LeftOut(LitLeNet):
    """An optimizer built from the features only: fc3 never trains."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for n, p in self.named_parameters() if "fc3" not in n], lr=0.01)


def test_the_trainer_optimizer_reaches_diagnose(tmp_path: Path) -> None:
    callback = GradscopeCallback()
    t = trainer(tmp_path, [callback], logger=False)
    t.fit(LeftOut(), loader())
    w = callback.watch
    diagnosis = w.diagnose()
    assert diagnosis.steps == 5 and "not_in_optimizer" not in diagnosis.unchecked
    top = diagnosis[0]
    assert (top.kind, top.params, top.module) == (
        "not_in_optimizer",
        ("net.fc3.weight", "net.fc3.bias"),
        "net.fc3",
    )
    # the report written at the end of fit opens with it
    page = callback.report_path.read_text()
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Parameters</h2>")
    assert "not_in_optimizer" in page


def test_a_failing_fit_still_writes_the_report_and_removes_the_hooks(tmp_path: Path) -> None:
    callback = GradscopeCallback()
    model = LitLeNet(fail_at=3)
    t = trainer(tmp_path, [callback], logger=False)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(model, loader())
    assert len(callback.watch.records) == 3
    assert callback.watch.closed
    assert callback.report_path is not None and callback.report_path.exists()
    # closed means no hook left: a new backward records nothing
    model.net(torch.randn(1, 1, 32, 32)).sum().backward()
    assert len(callback.watch.records) == 3


def test_the_callback_does_not_keep_the_model_alive(tmp_path: Path) -> None:
    callback = GradscopeCallback(report=None)
    model = LitLeNet()
    t = trainer(tmp_path, [callback], logger=False, max_steps=2)
    t.fit(model, loader(2))
    alive = weakref.ref(model)
    del model, t
    gc.collect()
    assert alive() is None
    assert len(callback.watch.records) == 2  # the records outlive the model


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every": 0}, "every=0"),
        ({"keep": "some"}, "keep='some'"),
        ({"include": 3}, "include=3"),
        ({"report": ""}, "report=''"),
        ({"log_every_n_steps": -1}, "log_every_n_steps=-1"),
        ({"history": 0}, "history=0"),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(GradscopeError, match=message.replace("[", r"\[")):
        GradscopeCallback(**options)


def test_watch_before_fit_says_so() -> None:
    with pytest.raises(GradscopeError, match=r"once Trainer.fit\(\) started"):
        _ = GradscopeCallback().watch
