"""GradscopeCallback in a real Hugging Face Trainer: a 2-layer GPT-2 built from its config (no
download) on random tokens, checked against plain hooks, the Trainer's own grad_norm and the
TensorBoard event files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import tb_read
import torch
from lit import GradNormHooks
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from gradscope import GradscopeError
from gradscope.integrations.transformers import GradscopeCallback


class PassEnds(TrainerCallback):  # type: ignore[misc]
    """Closes the oracle's pass after each micro-batch's backward (on_substep_end runs after
    every micro-batch but the window's last, on_pre_optimizer_step after the last)."""

    def __init__(self, hooks: GradNormHooks) -> None:
        self.hooks = hooks

    def on_substep_end(self, *args: Any, **kwargs: Any) -> None:
        self.hooks.end_pass()

    def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        self.hooks.end_pass()


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def _data(n: int = 16) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(2))
    return [{"input_ids": row, "labels": row} for row in ids]


def _train(
    tmp_path: Path, callback: GradscopeCallback, *, ahead: bool = False, **overrides: Any
) -> tuple[Trainer, GradNormHooks, GPT2LMHeadModel]:
    model = _gpt2()
    hooks = GradNormHooks(model)
    options: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_grad_norm": 0.5,
        "logging_steps": 1,
        "report_to": ["tensorboard"],
        "use_cpu": True,
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    options.update(overrides)
    callbacks = [PassEnds(hooks)] + ([] if ahead else [callback])
    trainer = Trainer(
        model=model, args=TrainingArguments(**options), train_dataset=_data(), callbacks=callbacks
    )
    if ahead:
        callback.add_to(trainer)
    trainer.train()
    hooks.remove()
    return trainer, hooks, model


def _names(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}  # lm_head.weight is tied to wte: not listed


def test_accumulation_and_clipping_against_hooks_and_the_trainer_grad_norm(tmp_path: Path) -> None:
    callback = GradscopeCallback()
    trainer, hooks, model = _train(tmp_path, callback)
    w = callback.watch
    assert w.closed and w.model_name == "GPT2LMHeadModel"
    assert callback.optimizers == [trainer.optimizer]
    # Two backward passes per optimizer step, each matching the plain hooks.
    assert len(w.records) == len(hooks.passes) == 6
    for record, oracle in zip(w.records, hooks.passes, strict=True):
        assert set(record) == set(oracle) == _names(model)
        for name, norm in oracle.items():
            assert record[name].recorded.norm == pytest.approx(norm, rel=1e-5)
    assert w.last["lm_head.weight"] is w.last["transformer.wte.weight"]  # tied: one record
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    for entry in logged:
        window_end = hooks.passes[2 * entry["step"] - 1]  # the accumulated gradient
        figures = {k: v for k, v in entry.items() if k.startswith("gradscope/grad_norm/")}
        assert set(figures) == {f"gradscope/grad_norm/{n}" for n in _names(model)}
        for name, norm in window_end.items():
            assert entry[f"gradscope/grad_norm/{name}"] == pytest.approx(norm, rel=1e-5)
            assert entry[f"gradscope/nonfinite/{name}"] == 0
        # The Trainer's grad_norm is clip_grad_norm_'s total before clipping: so are ours.
        total = math.sqrt(sum(v**2 for v in figures.values()))
        assert total == pytest.approx(entry["grad_norm"], rel=1e-5)
        assert entry["grad_norm"] > 0.5  # clipping to 0.5 had work to do
    # TensorBoard: gradscope's own run next to the Trainer's, at the Trainer's steps.
    scalars = tb_read.scalars(tmp_path / "out" / "runs" / "gradscope")
    for entry in logged:
        for name in _names(model):
            assert scalars[f"gradscope/grad_norm/{name}"][entry["step"]] == pytest.approx(
                entry[f"gradscope/grad_norm/{name}"], rel=1e-6
            )
    assert callback.report_path == tmp_path / "out" / "report.html"
    assert "gradscope report: GPT2LMHeadModel" in callback.report_path.read_text()
    # The Trainer's optimizer (wrapped by accelerate) reached the watch: its three steps were
    # recorded, each after clipping to max_grad_norm=0.5 changed .grad in place.
    steps = w._monitors.steps
    assert steps is not None and steps.steps == 3 and all(s.modified for s in steps.records)
    assert "not_in_optimizer" not in w.diagnose().unchecked


def test_add_to_puts_the_figures_through_the_trainers_tensorboard(tmp_path: Path) -> None:
    callback = GradscopeCallback(histograms=True)
    trainer, hooks, _ = _train(tmp_path, callback, ahead=True, max_steps=2)
    assert trainer.callback_handler.callbacks[0] is callback
    runs = tmp_path / "out" / "runs"
    theirs = next(p for p in runs.iterdir() if p.name != "gradscope")
    scalars = tb_read.scalars(theirs)  # written by transformers' TensorBoardCallback
    name = "transformer.h.0.attn.c_attn.weight"
    assert scalars[f"train/gradscope/grad_norm/{name}"][2] == pytest.approx(
        hooks.passes[3][name], rel=1e-5
    )
    ours = runs / "gradscope"
    assert tb_read.scalars(ours) == {}  # no second copy of the scalars ...
    histograms = tb_read.histograms(ours)  # ... but the histograms, which logs cannot carry
    # max_grad_norm rewrites .grad before the Trainer logs: the callback kept copies for them.
    assert callback.watch.copy
    hist = histograms[f"gradscope/grad/{name}"][2]
    assert hist.num == 64 * 192
    assert math.sqrt(hist.sum_squares) == pytest.approx(hooks.passes[3][name], rel=1e-4)


def test_into_logs_false_keeps_the_logs_lean(tmp_path: Path) -> None:
    callback = GradscopeCallback(into_logs=False, report=None)
    trainer, _, _ = _train(tmp_path, callback, max_steps=1, report_to="none")
    assert not any(k.startswith("gradscope/") for h in trainer.state.log_history for k in h)
    assert len(callback.watch.records) == 2
    assert callback.report_path is None
    assert not (tmp_path / "out" / "runs").exists()


def test_errors() -> None:
    with pytest.raises(GradscopeError, match=r"once Trainer\.train\(\) started"):
        _ = GradscopeCallback().watch
    with pytest.raises(GradscopeError, match="every=-1"):
        GradscopeCallback(every=-1)
    with pytest.raises(TypeError, match=r"takes a transformers\.Trainer"):
        GradscopeCallback().add_to(object())
