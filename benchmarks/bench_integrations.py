"""Overhead of the integrations on a training step, one thread: the same Trainer with and
without GradscopeCallback, and a plain loop with and without TensorBoard logging.

A step's time is the interval between two successive batch starts (everything the trainer does
per step, logging included). Each configuration is its own short fit; the fits run one after
the other within a round and rounds repeat, so drifts in machine speed hit them alike; each
round gives each configuration a median step time and a ratio to that round's baseline;
printed: the median over rounds. The plain loops are interleaved step by step in one process.

    python benchmarks/bench_integrations.py [--rounds 12] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import gradscope

WARMUP = 5


def mlp() -> tuple[nn.Module, torch.Tensor]:
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10)), torch.randn(64, 1024)


def lenet() -> tuple[nn.Module, torch.Tensor]:
    return gradscope.LeNet(), torch.randn(8, 1, 32, 32)


# ----------------------------------------------------------------------------- Lightning
def lightning_run(make: Callable[[], tuple[nn.Module, torch.Tensor]], steps: int) -> Any:
    import lightning.pytorch as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from gradscope.integrations.lightning import GradscopeCallback

    class Lit(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, _ = make()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *args: Any) -> None:
            self.starts.append(time.perf_counter())

    _, x = make()
    data = torch.utils.data.TensorDataset(x.repeat(steps + 1, *[1] * (x.dim() - 1)),
                                          torch.randn(x.shape[0] * (steps + 1), 10))  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=x.shape[0])

    def run(options: dict[str, Any] | None) -> float:
        clock = Clock()
        callbacks: list[Any] = [clock]
        if options is not None:
            callbacks.append(GradscopeCallback(report=None, **options))
        with tempfile.TemporaryDirectory() as folder:
            trainer = L.Trainer(
                max_steps=steps + 1,
                accelerator="cpu",
                logger=TensorBoardLogger(folder),
                callbacks=callbacks,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                log_every_n_steps=options.pop("_trainer_every", 50) if options else 50,
            )
            trainer.fit(Lit(), loader)
        gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
        return statistics.median(gaps[WARMUP:])

    return run


# ----------------------------------------------------------------------------- transformers
def transformers_run(steps: int) -> Any:
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from gradscope.integrations.transformers import GradscopeCallback

    hf_logging.set_verbosity_error()

    class Clock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.starts.append(time.perf_counter())

    ids = torch.randint(0, 128, (4 * (steps + 1), 32))
    data = [{"input_ids": row, "labels": row} for row in ids]

    def run(options: dict[str, Any] | None) -> float:
        torch.manual_seed(0)
        config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32)
        model = GPT2LMHeadModel(config)
        clock = Clock()
        callbacks: list[Any] = [clock]
        if options is not None:
            callbacks.append(GradscopeCallback(report=None, **options))
        with tempfile.TemporaryDirectory() as folder:
            args = TrainingArguments(
                output_dir=folder,
                max_steps=steps + 1,
                per_device_train_batch_size=4,
                logging_steps=10,
                report_to=["tensorboard"],
                use_cpu=True,
                save_strategy="no",
                disable_tqdm=True,
            )
            trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
            with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints each log
                trainer.train()
        gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
        return statistics.median(gaps[WARMUP:])

    return run


# ----------------------------------------------------------------------------- TensorBoard
def tensorboard_plain(
    make: Callable[[], tuple[nn.Module, torch.Tensor]], configs: dict[str, Any], steps: int
) -> dict[str, list[float]]:
    """A plain loop per configuration, interleaved step by step: {label: step times}."""
    from gradscope.integrations.tensorboard import log_watch, summary_writer

    loops = {}
    folder = tempfile.mkdtemp()
    for label, options in configs.items():
        net, x = make()
        target = torch.randn(x.shape[0], 10)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        w = gradscope.watch(net) if options is not None else None
        writer = summary_writer(f"{folder}/{len(loops)}") if options else None
        loops[label] = (net, x, target, opt, w, writer, options or {})
    times: dict[str, list[float]] = {label: [] for label in configs}
    for _ in range(steps + WARMUP):
        for label, (net, x, target, opt, w, writer, options) in loops.items():
            start = time.perf_counter()
            opt.zero_grad()
            nn.functional.mse_loss(net(x), target).backward()
            opt.step()
            if w is not None and options.get("log"):
                log_watch(w, writer, histograms=bool(options.get("histograms")))
            times[label].append(time.perf_counter() - start)
    for _, _, _, _, w, writer, _ in loops.values():
        if w is not None:
            w.close()
        if writer is not None:
            writer.close()
    return {label: t[WARMUP:] for label, t in times.items()}


def measure(name: str, run: Any, configs: dict[str, Any], rounds: int) -> None:
    ratios: dict[str, list[float]] = {label: [] for label in configs if label != "baseline"}
    base_times = []
    for _ in range(rounds):
        times = {
            label: run(None if opts is None else dict(opts)) for label, opts in configs.items()
        }
        base_times.append(times["baseline"])
        for label in ratios:
            ratios[label].append(times[label] / times["baseline"])
    cells = "  ".join(f"{label}: {statistics.median(v):.2f}x" for label, v in ratios.items())
    print(f"{name}: baseline step {statistics.median(base_times) * 1e3:.2f} ms  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    lightning_configs: dict[str, Any] = {
        "baseline": None,
        "callback": {},
        "callback, log every step": {"log_every_n_steps": 1},
        "callback, log every step + histograms": {"log_every_n_steps": 1, "histograms": True},
    }
    for label, make in (("LeNet b8", lenet), ("MLP 4x1024 b64", mlp)):
        measure(
            f"Lightning {label}", lightning_run(make, args.steps), lightning_configs, args.rounds
        )
    measure(
        "HF Trainer GPT-2 2L b4",
        transformers_run(args.steps),
        {"baseline": None, "callback": {}, "callback, histograms": {"histograms": True}},
        args.rounds,
    )
    tb_configs: dict[str, Any] = {
        "baseline": None,
        "watch()": {},
        "watch + log_watch each step": {"log": True},
        "+ histograms": {"log": True, "histograms": True},
    }
    for label, make in (("LeNet b8", lenet), ("MLP 4x1024 b64", mlp)):
        times = tensorboard_plain(make, tb_configs, args.steps * args.rounds)
        base = times.pop("baseline")
        cells = "  ".join(
            f"{name}: {statistics.median(t) / statistics.median(base):.2f}x"
            for name, t in times.items()
        )
        print(f"plain loop {label}: baseline step {statistics.median(base) * 1e3:.2f} ms  {cells}")


if __name__ == "__main__":
    main()
