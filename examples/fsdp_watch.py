"""Watch gradients under FSDP2 (``fully_shard``): every rank records every backward pass.

Run it the way a training job runs::

    torchrun --nproc-per-node 2 examples/fsdp_watch.py

(CPU with the gloo backend; on GPUs it uses NCCL, one GPU per process.) Each rank holds one shard
of every gradient; ``record[name].stats`` describe the whole gradient the optimizer uses,
combined across ranks with one small all_gather per backward pass, ``local_stats`` this rank's
shard and ``rank_stats`` every rank's. Rank 0 prints a few steps and checks the recorded norms
against ``clip_grad_norm_``.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import gradscope


def build() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights on every rank
    blocks = [nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)) for _ in range(3)]
    model = nn.Sequential(*blocks, nn.Linear(32, 4))
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if device is not None:
        torch.cuda.set_device(device)
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(100 + rank)  # every rank trains on its own data
    with gradscope.watch(model) as watch:
        for step in range(4):
            x = torch.randn(16, 32, device=device)
            loss = model(x).pow(2).mean()
            loss.backward()
            record = watch.last
            ours = math.sqrt(sum(record[name].stats.norm ** 2 for name in record))
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9)
            total = total.full_tensor() if hasattr(total, "full_tensor") else total
            assert math.isclose(ours, float(total), rel_tol=1e-4), (ours, float(total))
            first = record["0.0.weight"]
            if rank == 0:
                shards = ", ".join(f"{s.norm:.4f}" for s in first.rank_stats or [])
                print(
                    f"step {step}: loss {loss.item():.4f}, total grad norm {ours:.4f} "
                    f"(clip_grad_norm_ says {float(total):.4f}); 0.0.weight: whole "
                    f"{first.stats.norm:.4f} over {first.stats.numel} elements, "
                    f"shards by rank [{shards}]"
                )
            optimizer.step()
            optimizer.zero_grad()
    if rank == 0:
        print(f"{len(watch.records)} passes recorded on each of {dist.get_world_size()} ranks")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
