"""DDP checks, run by test_ddp.py under ``torchrun --nproc-per-node N`` (CPU, gloo).

Oracles: the same model without DDP on the same global batch, every rank's local gradient
gathered with ``all_gather``, and ``.grad`` itself (what the optimizer sees).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from dist_checks import main
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import gradscope

torch.set_num_threads(1)
RANK, WORLD = 0, 1


class Branchy(nn.Module):
    """An MLP with a head used only when asked: find_unused_parameters territory."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
        self.spare = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, spare: bool = True) -> torch.Tensor:
        out = self.body(x)
        return out + self.spare(x) if spare else out


def model() -> Branchy:
    torch.manual_seed(0)
    return Branchy()


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(1000 * step + rank))


def loss_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x).pow(2).mean()


def reference(steps: list[int]) -> dict[str, torch.Tensor]:
    plain = model()
    for step in steps:
        loss_of(plain, torch.cat([batch(step, r) for r in range(WORLD)])).backward()
    return {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}


def local_grads(steps: list[int]) -> dict[str, torch.Tensor]:
    plain = model()
    for step in steps:
        loss_of(plain, batch(step, RANK)).backward()
    return {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}


def close(a: torch.Tensor | None, b: torch.Tensor, **tol: float) -> None:
    assert a is not None
    torch.testing.assert_close(a, b, **tol)  # type: ignore[arg-type]


def no_sync_records_say_which_passes_synchronised() -> None:
    net = model()
    ddp = DDP(net)
    with gradscope.watch(ddp, keep="all", copy=True) as w:
        for step in range(3):
            if step < 2:
                with ddp.no_sync():
                    loss_of(ddp, batch(step, RANK)).backward()
            else:
                loss_of(ddp, batch(step, RANK)).backward()
    assert [r.synchronised for r in w.records] == [False, False, True], w.records
    own = local_grads([0])
    for name in own:
        close(w.records[0][name].after, own[name])  # unsynchronised: this rank's own gradient
    ref = reference([0, 1, 2])
    for name, param in net.named_parameters():
        if name in ref:
            close(w.last[name].after, param.grad)  # type: ignore[arg-type]
            close(w.last[name].after, ref[name], rtol=1e-5, atol=1e-6)


def bucket_views_keep_every_pass_right() -> None:
    net = model()
    ddp = DDP(net, gradient_as_bucket_view=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    seen: list[dict[str, torch.Tensor]] = []
    with gradscope.watch(ddp, keep="all") as w:
        for step in range(3):
            opt.zero_grad(set_to_none=step % 2 == 0)  # both ways DDP reuses its buckets
            loss_of(ddp, batch(step, RANK)).backward()
            seen.append(
                {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
            )
            opt.step()
    for record, grads in zip(w.records, seen, strict=True):
        for name, grad in grads.items():
            close(record[name].after, grad)
    assert w.records[0]["body.0.weight"].after.data_ptr() != net.body[0].weight.grad.data_ptr()  # type: ignore[union-attr]


def unused_parameters_are_missing() -> None:
    net = model()
    ddp = DDP(net, find_unused_parameters=True)
    with gradscope.watch(ddp) as w:
        ddp(batch(0, RANK), spare=False).pow(2).mean().backward()
        assert w.last.missing == ["spare.weight", "spare.bias"], w.last.missing
        net.zero_grad()
        loss_of(ddp, batch(1, RANK)).backward()
        assert w.last.missing == []
    for name, param in net.named_parameters():
        close(w.last[name].after, param.grad)  # type: ignore[arg-type]


def static_graph_matches_the_reference() -> None:
    net = model()
    ddp = DDP(net, static_graph=True)
    with gradscope.watch(ddp) as w:
        for step in range(3):
            net.zero_grad()
            loss_of(ddp, batch(step, RANK)).backward()
            ref = reference([step])
            for name, grad in ref.items():
                close(w.last[name].after, grad, rtol=1e-5, atol=1e-6)
                assert abs(w.last[name].stats.norm - grad.norm().item()) < 1e-5
    assert len(w.records) == 3 and not w.errors


def fp16_compression_records_what_the_optimizer_sees() -> None:
    net = model()
    ddp = DDP(net)
    ddp.register_comm_hook(dist.group.WORLD, default_hooks.fp16_compress_hook)
    with gradscope.watch(ddp, copy=True) as w:
        loss_of(ddp, batch(0, RANK)).backward()
    ref = reference([0])
    own = local_grads([0])
    exact = True
    for name, param in net.named_parameters():
        if name not in ref:
            continue
        close(w.last[name].after, param.grad, rtol=0, atol=0)  # type: ignore[arg-type]
        close(w.last[name].after, ref[name], rtol=2e-3, atol=1e-4)  # fp16 rounding
        close(w.last[name].local, own[name])
        exact = exact and torch.equal(param.grad, ref[name])  # type: ignore[arg-type]
    assert not exact, "fp16 compression changed nothing: the check would not see a difference"


def gradscope_adds_no_collective_under_ddp() -> None:
    calls: list[str] = []
    originals = {n: getattr(dist, n) for n in ("all_gather", "all_reduce", "broadcast", "gather")}

    def counting(name: str):  # type: ignore[no-untyped-def]
        def call(*args: object, **kwargs: object) -> object:
            calls.append(name)
            return originals[name](*args, **kwargs)

        return call

    net = model()
    ddp = DDP(net)
    with gradscope.watch(ddp) as w:
        for name in originals:
            setattr(dist, name, counting(name))
        try:
            for _ in range(2):
                loss_of(ddp, batch(0, RANK)).backward()
        finally:
            for name, fn in originals.items():
                setattr(dist, name, fn)
    assert calls == [] and len(w.records) == 2 and w.last.synchronised, calls


def report_for_all_ranks_has_a_column_per_rank() -> None:
    import sys
    from pathlib import Path

    net = model()
    ddp = DDP(net)
    with gradscope.watch(ddp) as w:
        for step in range(3):
            x = batch(step, RANK) * (1 + 4 * RANK)  # the last rank's data is much larger
            loss_of(ddp, x).backward()
    path = Path(sys.argv[1]) / "ranks.html"
    assert w.report(path, ranks="all") == path  # collective: every rank calls it
    dist.barrier()
    page = path.read_text()
    for rank in range(WORLD):
        assert f"<th>rank {rank}</th>" in page, rank
    assert "rank-odd" in page  # the large-data rank stands out
    assert "total gradient norm per rank" in page


if __name__ == "__main__":
    RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    main(
        {
            f.__name__: f
            for f in (
                no_sync_records_say_which_passes_synchronised,
                bucket_views_keep_every_pass_right,
                unused_parameters_are_missing,
                static_graph_matches_the_reference,
                fp16_compression_records_what_the_optimizer_sees,
                gradscope_adds_no_collective_under_ddp,
                report_for_all_ranks_has_a_column_per_rank,
            )
        }
    )
