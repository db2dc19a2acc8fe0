"""watch() under DDP beyond the basics (2 processes): see ddp_worker.py for the checks."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from dist_launch import run_checks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")

CHECKS = [
    "no_sync_records_say_which_passes_synchronised",
    "bucket_views_keep_every_pass_right",
    "unused_parameters_are_missing",
    "static_graph_matches_the_reference",
    "fp16_compression_records_what_the_optimizer_sees",
    "gradscope_adds_no_collective_under_ddp",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    return run_checks("ddp_worker.py", 2, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("check", CHECKS)
def test_ddp(results: list[dict[str, str]], check: str) -> None:
    failures = {rank: out[check] for rank, out in enumerate(results) if out.get(check) != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{text}" for r, text in failures.items())
