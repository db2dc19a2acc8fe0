"""watch() under FSDP2 (fully_shard), 2 and 4 processes: see fsdp_worker.py for the checks."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from dist_launch import run_checks

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")

CHECKS = [
    "one_record_per_pass_and_global_norms",
    "clip_grad_norm_agrees",
    "accumulation_without_sync",
    "accumulation_across_synced_passes",
    "nan_counts_are_combined",
    "one_all_gather_per_synced_pass",
    "mixed_precision",
    "partly_sharded_model_is_refused",
    "fsdp1_is_refused_with_the_fix",
    "the_model_is_collected_after_close",
    "graph_names_parameters_and_labels_fsdp_hooks",
    "check_step_on_local_shards",
    "one_rank_failing_fails_every_rank",
    "keep_none_and_every_other_pass",
]


@pytest.fixture(scope="module", params=[2, 4], ids=["2proc", "4proc"])
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, str]]:
    nproc = request.param
    return run_checks("fsdp_worker.py", nproc, tmp_path_factory.mktemp(f"fsdp{nproc}"))


@pytest.mark.parametrize("check", CHECKS)
def test_fsdp(results: list[dict[str, str]], check: str) -> None:
    failures = {rank: out[check] for rank, out in enumerate(results) if out.get(check) != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{text}" for r, text in failures.items())
