"""check_replicas and assert_replicas_in_sync on 2 and 4 processes: see replicas_worker.py."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from dist_launch import run_checks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")

CHECKS = [
    "in_sync_model_passes",
    "one_changed_parameter_is_named_with_its_rank_and_size",
    "one_ulp_is_found",
    "unsynchronised_batchnorm_buffers",
    "different_seeds_diverge_everywhere",
    "gradients_only_on_some_ranks",
    "one_checksum_gather_when_in_sync",
]


@pytest.fixture(scope="module", params=[2, 4], ids=["2proc", "4proc"])
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, str]]:
    return run_checks("replicas_worker.py", request.param, tmp_path_factory.mktemp("replicas"))


@pytest.mark.parametrize("check", CHECKS)
def test_replicas(results: list[dict[str, str]], check: str) -> None:
    failures = {rank: out[check] for rank, out in enumerate(results) if out.get(check) != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{text}" for r, text in failures.items())
