"""watch() under DDP beyond the basics (2 processes): see ddp_worker.py for the checks."""

from __future__ import annotations

from pathlib import Path

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
    "report_for_all_ranks_has_a_column_per_rank",
]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("ddp")
    results = run_checks("ddp_worker.py", 2, out)
    REPORTS.append(out / "ranks.html")
    return results


REPORTS: list[Path] = []


def test_only_rank_0_wrote_the_page(results: list[dict[str, str]]) -> None:
    assert results[0]["report_for_all_ranks_has_a_column_per_rank"] == "ok"
    assert REPORTS and REPORTS[0].exists()
    assert not list(REPORTS[0].parent.glob(".*ranks.html*"))  # no half-written temp file


@pytest.mark.parametrize("check", CHECKS)
def test_ddp(results: list[dict[str, str]], check: str) -> None:
    failures = {rank: out[check] for rank, out in enumerate(results) if out.get(check) != "ok"}
    assert not failures, "\n".join(f"rank {r}:\n{text}" for r, text in failures.items())
