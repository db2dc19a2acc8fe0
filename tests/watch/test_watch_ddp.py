"""watch() under DistributedDataParallel: two CPU processes with the gloo backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradscope


def _run(rank: int, world_size: int, init_file: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        plain = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        plain.load_state_dict(net.state_dict())
        model = nn.parallel.DistributedDataParallel(net)
        torch.manual_seed(100 + rank)  # every rank sees different data
        x = torch.randn(5, 4)
        plain(x).pow(2).sum().backward()
        local = {name: p.grad.clone() for name, p in plain.named_parameters()}
        for copy in (False, True):
            net.zero_grad()
            with gradscope.watch(model, copy=copy) as w:
                model(x).pow(2).sum().backward()
            _check(w.last, net, local, world_size)
    finally:
        dist.destroy_process_group()


def _check(
    record: gradscope.BackwardRecord,
    net: nn.Module,
    local: dict[str, torch.Tensor],
    world_size: int,
) -> None:
    assert set(record) == set(local), set(record)  # names without DDP's "module." prefix
    for name, param in net.named_parameters():
        grad = record[name]
        # `local` is what this process computed, `after` the average the optimizer will use.
        torch.testing.assert_close(grad.local, local[name])
        torch.testing.assert_close(grad.after, param.grad)
        gathered = [torch.zeros_like(local[name]) for _ in range(world_size)]
        dist.all_gather(gathered, local[name])
        torch.testing.assert_close(grad.after, sum(gathered) / world_size)
        assert not torch.allclose(grad.after, grad.local)  # the ranks diverged
        torch.testing.assert_close(grad.delta, grad.after)  # .grad was empty before


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed support")
def test_ddp_records_the_synchronised_and_the_local_gradient(tmp_path: Path) -> None:
    mp.spawn(_run, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
