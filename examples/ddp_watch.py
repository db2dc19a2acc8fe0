"""Watch gradients under DistributedDataParallel, with gradient accumulation (``no_sync``).

Run it the way a training job runs::

    torchrun --nproc-per-node 2 examples/ddp_watch.py

(CPU with the gloo backend; on GPUs it uses NCCL, one GPU per process.) ``record[name].after``
is the averaged gradient the optimizer uses, ``record[name].local`` the one this process
computed, and ``record.synchronised`` says whether the pass synchronised (False inside
``no_sync()``). Rank 0 prints each pass.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradscope

ACCUMULATE = 2  # backward passes per optimizer step


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    torch.manual_seed(0)  # DDP also broadcasts rank 0's weights
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 4)).to(device)
    model = DDP(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(100 + rank)  # every rank trains on its own data
    with gradscope.watch(model) as watch:
        for micro in range(3 * ACCUMULATE):
            x = torch.randn(16, 32, device=device)
            last = (micro + 1) % ACCUMULATE == 0
            if last:
                model(x).pow(2).mean().backward()
            else:
                with model.no_sync():  # accumulate locally, synchronise on the last micro-batch
                    model(x).pow(2).mean().backward()
            record = watch.last
            weight = record["0.weight"]
            if rank == 0:
                local = weight.local
                print(
                    f"pass {record.index}: synchronised={record.synchronised}, 0.weight grad "
                    f"norm {weight.stats.norm:.4f}"
                    + (f" (this rank's own: {local.norm():.4f})" if local is not None else "")
                )
            if last:
                optimizer.step()
                optimizer.zero_grad()
    synced = [r.synchronised for r in watch.records]
    assert synced == [(i + 1) % ACCUMULATE == 0 for i in range(3 * ACCUMULATE)], synced
    if rank == 0:
        print(f"{len(watch.records)} passes recorded, {sum(synced)} synchronised")
    # DDP holds the process group inside a reference cycle: free it now, while the group is
    # alive, not during interpreter shutdown, where gloo's threads can abort the process
    del model, optimizer
    gc.collect()
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
