"""Lightning pieces the tests share: the tutorial's LeNet as a LightningModule on random data,
and the oracle: plain PyTorch hooks that read each parameter's ``.grad`` norm per backward."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradscope


class LitLeNet(L.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = gradscope.LeNet()
        self.fail_at = fail_at
        self.output_dtypes: list[torch.dtype] = []
        self.before_step: list[dict[str, float]] = []  # .grad norms right before each step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and batch_idx == self.fail_at:
            raise RuntimeError("boom: a failing training step")
        x, y = batch
        out = self.net(x)
        self.output_dtypes.append(out.dtype)
        loss = nn.functional.mse_loss(out.float(), y)
        self.log("loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Runs after the callbacks' hook and before Lightning clips: the gradients the watch saw.
        self.before_step.append(
            {n: float(p.grad.norm()) for n, p in self.named_parameters() if p.grad is not None}
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(batches: int = 10, batch_size: int = 2) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    n = batches * batch_size
    data = TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randn(n, 10, generator=g))
    return DataLoader(data, batch_size=batch_size)


class GradNormHooks:
    """The oracle: per backward pass, each parameter's accumulated ``.grad`` norm, read by a
    post-accumulate hook (its last firing in a pass is the value the pass left)."""

    def __init__(self, module: nn.Module) -> None:
        self.passes: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        self._handles = [
            p.register_post_accumulate_grad_hook(
                lambda p, name=name: self._current.__setitem__(name, float(p.grad.norm()))
            )
            for name, p in module.named_parameters()
        ]

    def end_pass(self) -> None:
        self.passes.append(self._current)
        self._current = {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class PassEnds(L.Callback):
    """Closes the oracle's pass after each backward (on_after_backward)."""

    def __init__(self, hooks: GradNormHooks) -> None:
        self.hooks = hooks

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hooks.end_pass()


def trainer(tmp_path: Any, callbacks: list[Any], **kwargs: Any) -> L.Trainer:
    options: dict[str, Any] = {
        "max_steps": 5,
        "accelerator": "cpu",
        "devices": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": str(tmp_path),
    }
    options.update(kwargs)
    return L.Trainer(callbacks=callbacks, **options)
