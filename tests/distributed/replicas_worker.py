"""check_replicas / assert_replicas_in_sync checks, run by test_replicas.py under torchrun.

Each check makes ranks diverge on purpose and compares the report with what was done.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from dist_checks import main
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gradscope
import gradscope.testing as gt
from gradscope import GradientAssertionError

torch.set_num_threads(1)
RANK, WORLD = 0, 1


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def in_sync_model_passes() -> None:
    model = net()
    report = gradscope.check_replicas(model, grads=True)
    assert report.ok and report.world_size == WORLD, report
    assert report.checked == 6 + 3 + 6, report  # 6 parameters, 3 BN buffers, 6 gradients
    gt.assert_replicas_in_sync(model)


def one_changed_parameter_is_named_with_its_rank_and_size() -> None:
    model = net()
    if RANK == WORLD - 1:
        with torch.no_grad():
            model[3].weight[1, 2] += 0.25
    report = gradscope.check_replicas(model)
    assert [m.name for m in report.mismatches] == ["3.weight"], report
    bad = report.mismatches[0]
    assert bad.kind == "parameter" and bad.ranks == [WORLD - 1], bad
    assert abs(bad.max_abs_diff[WORLD - 1] - 0.25) < 1e-6, bad
    try:
        gt.assert_replicas_in_sync(model)
    except GradientAssertionError as error:
        text = str(error)
        assert "parameter 3.weight" in text and f"rank {WORLD - 1}" in text, text
        assert "0.25" in text and "Hint:" in text, text
    else:
        raise AssertionError("assert_replicas_in_sync passed on diverged replicas")


def one_ulp_is_found() -> None:
    model = net()
    if RANK == 1:
        with torch.no_grad():
            w = model[0].bias
            w[0] = torch.nextafter(w[0], torch.tensor(10.0))
    report = gradscope.check_replicas(model, buffers=False)
    assert [m.name for m in report.mismatches] == ["0.bias"], report
    assert 0 < report.mismatches[0].max_abs_diff[1] < 1e-6


def unsynchronised_batchnorm_buffers() -> None:
    # DDP(broadcast_buffers=False): each rank's running statistics follow its own data
    model = DDP(net(), broadcast_buffers=False)
    torch.manual_seed(10 + RANK)
    model(torch.randn(16, 5)).sum().backward()
    report = gradscope.check_replicas(model, grads=True)
    names = sorted(m.name for m in report.mismatches)
    assert names == ["1.running_mean", "1.running_var"], report  # grads were averaged
    assert all(m.kind == "buffer" for m in report.mismatches)
    assert sorted(report.mismatches[0].ranks) == list(range(1, WORLD))
    params_only = gradscope.check_replicas(model, buffers=False)
    assert params_only.ok, params_only


def different_seeds_diverge_everywhere() -> None:
    model = net(seed=RANK)
    report = gradscope.check_replicas(model, buffers=True)
    # BatchNorm starts from ones and zeros, its buffers too: only the Linear layers differ
    assert sorted(m.name for m in report.mismatches) == [
        "0.bias",
        "0.weight",
        "3.bias",
        "3.weight",
    ], report
    assert all(m.ranks == list(range(1, WORLD)) for m in report.mismatches)


def gradients_only_on_some_ranks() -> None:
    model = net()
    if RANK == 0:
        model(torch.randn(4, 5)).sum().backward()
    report = gradscope.check_replicas(model, buffers=False, grads=True)
    assert len(report.mismatches) == 6 and all(m.kind == "gradient" for m in report.mismatches)
    assert "no gradient on ranks" in report.mismatches[0].problem, report


def one_checksum_gather_when_in_sync() -> None:
    model = net()
    calls: list[str] = []
    real_obj, real = dist.all_gather_object, dist.all_gather

    def obj(*a: object, **k: object) -> object:
        calls.append("all_gather_object")
        return real_obj(*a, **k)  # type: ignore[arg-type]

    def tensor(*a: object, **k: object) -> object:
        calls.append("all_gather")
        return real(*a, **k)  # type: ignore[arg-type]

    dist.all_gather_object, dist.all_gather = obj, tensor  # type: ignore[assignment]
    try:
        gradscope.check_replicas(model)
        in_sync = list(calls)
        if RANK == 1:
            with torch.no_grad():
                model[0].weight.add_(1)
        gradscope.check_replicas(model)
    finally:
        dist.all_gather_object, dist.all_gather = real_obj, real
    assert in_sync == ["all_gather_object"], in_sync
    assert calls == ["all_gather_object", "all_gather_object", "all_gather"], calls


if __name__ == "__main__":
    RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    main(
        {
            f.__name__: f
            for f in (
                in_sync_model_passes,
                one_changed_parameter_is_named_with_its_rank_and_size,
                one_ulp_is_found,
                unsynchronised_batchnorm_buffers,
                different_seeds_diverge_everywhere,
                gradients_only_on_some_ranks,
                one_checksum_gather_when_in_sync,
            )
        }
    )
