"""Run by test_lightning_ddp.py as a script: Lightning re-executes it for the second process.

    python ddp_fit.py OUT_DIR

Each process trains the tutorial's LeNet under strategy="ddp" on CPU (gloo) with a
GradscopeCallback, and writes OUT_DIR/rank<k>.json with what its watch recorded next to the
oracles: its own post-accumulate hooks (the local gradient, before DDP averages it) and the
``.grad`` the optimizer is about to use (the average), read in on_before_optimizer_step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    import lightning.pytorch as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from lit import GradNormHooks, LitLeNet, PassEnds, loader

    from gradscope.integrations.lightning import GradscopeCallback

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LitLeNet()
    hooks = GradNormHooks(model)
    callback = GradscopeCallback()
    trainer = L.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_steps=3,
        log_every_n_steps=1,
        logger=TensorBoardLogger(out, name="tb"),
        callbacks=[callback, PassEnds(hooks)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, loader(batches=6))
    w = callback.watch
    result = {
        "rank": trainer.global_rank,
        "log_dir": trainer.log_dir,
        "report": None if callback.report_path is None else str(callback.report_path),
        "model_name": w.model_name,
        "indices": [r.index for r in w.records],
        "after": [{n: g.recorded.norm for n, g in r.grads.items()} for r in w.records],
        "local": [
            {n: float(g.local.norm()) for n, g in r.grads.items() if g.local is not None}
            for r in w.records
        ],
        "hooks": hooks.passes,
        "before_step": model.before_step,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
    # Lightning leaves the process group alive; exiting with it alive lets gloo's worker threads
    # outlive the interpreter, which aborts (SIGABRT, "terminate called without an active
    # exception") now and then: the documented way out is destroy_process_group().
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]))
