"""The distributed pieces on one process: shard arithmetic against numpy, input checks."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradscope
from gradscope._distributed.shards import combine
from gradscope._report.ranks import RankView, ranks_section

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@given(st.lists(st.lists(floats, min_size=0, max_size=6), min_size=1, max_size=4))
def test_combined_shards_match_numpy_on_the_whole_gradient(shards: list[list[float]]) -> None:
    rows = []
    for values in shards:
        t = torch.tensor(values, dtype=torch.float64)
        finite = torch.isfinite(t)
        norm = float(torch.linalg.vector_norm(t)) if t.numel() else 0.0
        rows.append([(norm, int(t.isnan().sum()), int((~finite & ~t.isnan()).sum()), t.numel())])
    whole = np.array([v for values in shards for v in values], dtype=np.float64)
    norm, nan, inf, numel = combine(rows)[0]
    assert numel == whole.size
    assert nan == int(np.isnan(whole).sum()) and inf == int(np.isinf(whole).sum())
    expected = float(np.linalg.norm(whole)) if whole.size else 0.0
    if math.isnan(expected):
        assert math.isnan(norm)
    else:
        assert norm == pytest.approx(expected, rel=1e-12)


def test_report_for_all_ranks_on_one_process_has_one_column(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    with gradscope.watch(net) as w:
        net(torch.ones(4, 3)).sum().backward()
    assert w.last.synchronised is None  # one process: no synchronisation to speak of
    page = w.report(tmp_path / "r.html", ranks="all").read_text()
    assert "<th>rank 0</th>" in page and "<th>rank 1</th>" not in page
    with pytest.raises(gradscope.GradscopeError, match='takes "all"'):
        w.report(tmp_path / "r.html", ranks="some")  # type: ignore[arg-type]


def test_a_rank_far_from_the_others_is_marked() -> None:
    views = [RankView(r, {"w": (norm, 0)}, [(1, norm)]) for r, norm in enumerate((1, 1.1, 9))]
    html = ranks_section(views)
    assert html.count('class="rank-odd"') == 1 and '<td class="rank-odd">9</td>' in html


def test_check_replicas_takes_a_module() -> None:
    with pytest.raises(gradscope.GradscopeError, match="takes the model"):
        gradscope.check_replicas([torch.zeros(2)])  # type: ignore[arg-type]
    report = gradscope.check_replicas(torch.nn.BatchNorm1d(2), grads=True)
    assert report.ok and report.world_size == 1 and "in sync" in str(report)


def test_watch_on_a_plain_model_imports_no_fsdp() -> None:
    # Importing torch.distributed.fsdp takes seconds and registers torch libraries that must not
    # load twice (pytester's inline runs purge and re-import modules): watch() must not do it.
    code = (
        "import sys, torch, gradscope\n"
        "with gradscope.watch(torch.nn.Linear(2, 2)) as w:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch.distributed.fsdp', "
        "'torch.distributed.tensor'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
