"""FSDP2 checks, run by test_fsdp.py under ``torchrun --nproc-per-node N`` (CPU, gloo).

The oracle is the same model trained without FSDP on the same global batch (every rank builds
every rank's data), and ``full_tensor()`` of FSDP's own DTensor gradients.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from dist_checks import main
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import gradscope
from gradscope import GradscopeError

torch.set_num_threads(1)
RANK, WORLD = 0, 1


def mlp() -> nn.Sequential:
    torch.manual_seed(0)  # the same initial weights on every rank and for the reference
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 7), nn.Tanh(), nn.Linear(7, 3))


def shard(net: nn.Sequential, **options: object) -> nn.Sequential:
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **options)  # type: ignore[arg-type]
    fully_shard(net, **options)  # type: ignore[arg-type]
    return net


def batch(step: int, rank: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(1000 * step + rank))


def loss_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x).pow(2).mean()


def reference_grads(steps: list[int]) -> dict[str, torch.Tensor]:
    """The gradients of the unsharded model on the global batches of ``steps``, summed.

    FSDP averages over ranks, each rank's loss being a mean over its own batch: the same as
    the mean over the global batch.
    """
    plain = mlp()
    for step in steps:
        x = torch.cat([batch(step, r) for r in range(WORLD)])
        loss_of(plain, x).backward()
    return {n: p.grad.clone() for n, p in plain.named_parameters()}  # type: ignore[union-attr]


def full(grad: torch.Tensor) -> torch.Tensor:
    return grad.full_tensor()  # type: ignore[attr-defined,no-any-return]


def check_against_reference(
    record: gradscope.BackwardRecord, net: nn.Module, ref: dict[str, torch.Tensor]
) -> None:
    assert set(record) == set(ref), sorted(record)
    total_sq = 0.0
    for name, param in net.named_parameters():
        r = record[name]
        whole = full(param.grad)
        torch.testing.assert_close(whole, ref[name], rtol=1e-5, atol=1e-6)
        assert r.stats.numel == ref[name].numel(), (name, r.stats)
        assert math.isclose(r.stats.norm, ref[name].double().norm().item(), rel_tol=1e-5), name
        assert (r.stats.nan, r.stats.inf) == (0, 0)
        local = param.grad._local_tensor  # type: ignore[union-attr]
        after = r.after
        assert after is not None and type(after) is torch.Tensor
        torch.testing.assert_close(after, local)
        # this rank's rows of the whole gradient
        rows = ref[name].shape[0]
        per = math.ceil(rows / WORLD)
        start, stop = min(RANK * per, rows), min((RANK + 1) * per, rows)
        torch.testing.assert_close(after, whole[start:stop])
        assert math.isclose(r.local_stats.norm, local.double().norm().item(), rel_tol=1e-6)
        assert r.local_stats.numel == local.numel()
        ranks = r.rank_stats
        assert ranks is not None and len(ranks) == WORLD
        assert sum(s.numel for s in ranks) == ref[name].numel()
        assert math.isclose(ranks[RANK].norm, r.local_stats.norm, rel_tol=1e-9)
        total_sq += r.stats.norm**2
    total = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])  # type: ignore[misc]
    total = full(total) if hasattr(total, "full_tensor") else total
    assert math.isclose(math.sqrt(total_sq), total.item(), rel_tol=1e-5), (total_sq, total)


def one_record_per_pass_and_global_norms() -> None:
    for reshard in (True, False):
        net = shard(mlp(), reshard_after_forward=reshard)
        with gradscope.watch(net) as w:
            for step in range(3):
                net.zero_grad()
                loss_of(net, batch(step, RANK)).backward()
                check_against_reference(w.last, net, reference_grads([step]))
        assert len(w.records) == 3
        assert [r.synchronised for r in w.records] == [True, True, True]
        assert not w.errors, w.errors


def clip_grad_norm_agrees() -> None:
    net = shard(mlp())
    with gradscope.watch(net, copy=True) as w:
        loss_of(net, batch(0, RANK)).backward()
    ours = math.sqrt(sum(w.last[n].stats.norm ** 2 for n in w.last))
    clipped = torch.nn.utils.clip_grad_norm_(net.parameters(), 1e9)
    clipped = full(clipped) if hasattr(clipped, "full_tensor") else clipped
    assert math.isclose(ours, clipped.item(), rel_tol=1e-5), (ours, clipped)


def accumulation_without_sync() -> None:
    net = shard(mlp())
    with gradscope.watch(net) as w:
        for step in range(3):
            net.set_requires_gradient_sync(step == 2)
            loss_of(net, batch(step, RANK)).backward()
    assert [r.synchronised for r in w.records] == [False, False, True], w.records
    assert len(w.records[0]) == 0 and w.records[0].missing == []
    check_against_reference(w.last, net, reference_grads([0, 1, 2]))
    assert not w.errors, w.errors


def accumulation_across_synced_passes() -> None:
    net = shard(mlp())
    with gradscope.watch(net, keep="all") as w:
        loss_of(net, batch(0, RANK)).backward()
        first = {n: p.grad._local_tensor.clone() for n, p in net.named_parameters()}  # type: ignore[union-attr]
        loss_of(net, batch(1, RANK)).backward()  # no zero_grad: FSDP adds into the shards
    check_against_reference(w.last, net, reference_grads([0, 1]))
    for name, param in net.named_parameters():
        old, new = w.records[0][name], w.records[1][name]
        torch.testing.assert_close(old.after, first[name])  # copy-on-write kept pass 0's value
        torch.testing.assert_close(new.before, first[name])
        torch.testing.assert_close(new.delta, param.grad._local_tensor - first[name])  # type: ignore[union-attr]


def nan_counts_are_combined() -> None:
    net = shard(mlp())
    x = batch(0, RANK)
    if RANK == WORLD - 1:
        x[0, 0] = float("nan")  # one rank only: after averaging, every gradient element is NaN
    with gradscope.watch(net) as w:
        loss_of(net, x).backward()
    for name, param in net.named_parameters():
        whole = full(param.grad)
        r = w.last[name]
        assert r.stats.nan == int(whole.isnan().sum()), (name, r.stats)
        assert r.stats.nan > 0 and math.isnan(r.stats.norm)
        assert sum(s.nan for s in r.rank_stats or []) == r.stats.nan
    assert sorted(w.last.nonfinite) == sorted(n for n, _ in net.named_parameters())


def one_all_gather_per_synced_pass() -> None:
    net = shard(mlp())
    calls: list[str] = []
    real = dist.all_gather

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("all_gather")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with gradscope.watch(net) as w:
        loss_of(net, batch(0, RANK)).backward()  # warm up FSDP's own lazy init
        dist.all_gather = counting  # type: ignore[assignment]
        try:
            loss_of(net, batch(1, RANK)).backward()
            n_synced = len(calls)
            net.set_requires_gradient_sync(False)
            loss_of(net, batch(2, RANK)).backward()
        finally:
            dist.all_gather = real
    assert n_synced == 1 and len(calls) == 1, calls
    assert len(w.records) == 3


def mixed_precision() -> None:
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    net = shard(mlp(), mp_policy=policy)
    with gradscope.watch(net) as w:
        loss_of(net, batch(0, RANK)).backward()
    total = torch.nn.utils.get_total_norm([p.grad for p in net.parameters()])  # type: ignore[misc]
    total = full(total) if hasattr(total, "full_tensor") else total
    ours = math.sqrt(sum(w.last[n].stats.norm ** 2 for n in w.last))
    assert math.isclose(ours, total.item(), rel_tol=1e-5), (ours, total)
    for name, param in net.named_parameters():
        assert w.last[name].after.dtype == param.grad.dtype  # type: ignore[union-attr]
        ref = reference_grads([0])[name]
        assert math.isclose(w.last[name].stats.norm, ref.norm().item(), rel_tol=0.05), name


def partly_sharded_model_is_refused() -> None:
    net = mlp()
    fully_shard(net[0])  # the root is not sharded: its other parameters stay plain
    try:
        gradscope.watch(net)
    except GradscopeError as error:
        assert "fully_shard(model)" in str(error), error
    else:
        raise AssertionError("watch() accepted a partly sharded model")


def fsdp1_is_refused_with_the_fix() -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        net = FullyShardedDataParallel(mlp(), use_orig_params=True, device_id=torch.device("cpu"))
    except Exception as error:  # FSDP1 may not build on CPU in this torch
        raise AssertionError(f"could not build FSDP1 on CPU: {error!r}") from None
    try:
        gradscope.watch(net)
    except GradscopeError as error:
        assert "fully_shard" in str(error), error
    else:
        raise AssertionError("watch() accepted FSDP1")


def the_model_is_collected_after_close() -> None:
    import gc
    import weakref

    net = shard(mlp())
    with gradscope.watch(net) as w:
        loss_of(net, batch(0, RANK)).backward()
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None, "the watch kept the FSDP model alive"
    assert w.last is not None


def graph_names_parameters_and_labels_fsdp_hooks() -> None:
    net = shard(mlp())
    with gradscope.watch(net):  # module tags come from the watch's forward hooks
        loss = loss_of(net, batch(0, RANK))
        drawn = gradscope.graph(loss, params=net, grads=True)
        # the oracle: a plain traversal of next_functions
        seen, stack, accumulate, hooks = set(), [loss.grad_fn], 0, 0
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            accumulate += type(fn).__name__ == "AccumulateGrad"
            hooks += type(fn).__name__ == "RegisterPostBackwardFunctionBackward"
            stack.extend(f for f, _ in fn.next_functions)
        loss.backward()
    params = [n for n in drawn.nodes if n.kind == "parameter"]
    assert len(params) == accumulate == 6
    assert sorted(n.param for n in params) == sorted(  # type: ignore[type-var]
        name for name, _ in net.named_parameters()
    ), [n.param for n in params]
    labelled = [n for n in drawn.nodes if n.label.startswith("FSDP2 post-backward hook")]
    assert len(labelled) == hooks > 0, [n.label for n in drawn.nodes]
    modules = {n.module for n in drawn.nodes if n.kind == "op" and n.module}
    assert {"0", "2", "4"} <= modules, modules
    assert all(n.grad_norm is not None for n in params)


def check_step_on_local_shards() -> None:
    net = shard(mlp())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(3):
        loss_of(net, batch(step, RANK)).backward()
        with gradscope.check_step(opt, params=net) as report:
            opt.step()
        opt.zero_grad()
        assert report.ok, report
        assert [p.name for p in report.params] == [n for n, _ in net.named_parameters()]


def one_rank_failing_fails_every_rank() -> None:
    net = shard(mlp())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    loss_of(net, batch(0, RANK)).backward()
    with gradscope.check_step(opt, params=net) as report:
        opt.step()
        if RANK == 1:  # a bug on one rank: its shard of 2.bias moves on its own
            with torch.no_grad():
                net[2].bias._local_tensor.add_(0.5)  # type: ignore[union-attr]
    assert not report.ok, report
    text = str(report)
    if RANK == 1:
        assert [p.name for p in report.failures] == ["2.bias"], text
    else:
        assert "rank 1 failed this step: parameters 2.bias" in report.problems, report.problems
    loss_of(net, batch(1, RANK)).backward()
    with gradscope.verify_optimizer(opt, params=net, on_mismatch="warn") as verifier:
        opt.step()
    assert verifier.reports[-1].ok, verifier.reports[-1]


def keep_none_and_every_other_pass() -> None:
    net = shard(mlp())
    with gradscope.watch(net, keep="none", every=2) as w:
        for step in range(4):
            net.zero_grad()
            loss_of(net, batch(step, RANK)).backward()
            if step % 2 == 0:  # recorded: the whole gradient's norms, no tensors kept
                ref = reference_grads([step])
                for name, grad in ref.items():
                    r = w.last[name]
                    assert r.after is None and r.stats.numel == grad.numel()
                    assert math.isclose(r.stats.norm, grad.double().norm().item(), rel_tol=1e-5)
    assert [r.index for r in w.records] == [1, 3], [r.index for r in w.records]


if __name__ == "__main__":
    import os

    RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    main(
        {
            f.__name__: f
            for f in (
                one_record_per_pass_and_global_norms,
                clip_grad_norm_agrees,
                accumulation_without_sync,
                accumulation_across_synced_passes,
                nan_counts_are_combined,
                one_all_gather_per_synced_pass,
                mixed_precision,
                partly_sharded_model_is_refused,
                fsdp1_is_refused_with_the_fix,
                the_model_is_collected_after_close,
                graph_names_parameters_and_labels_fsdp_hooks,
                check_step_on_local_shards,
                one_rank_failing_fails_every_rank,
                keep_none_and_every_other_pass,
            )
        }
    )
