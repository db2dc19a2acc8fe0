"""GradscopeCallback under Lightning's strategy="ddp" with 2 CPU processes (gloo).

Lightning launches the second process by re-running the script, so the run is a subprocess
with a free port and a timeout: a hung collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tb_read
import torch.distributed as dist

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed support")
def test_ddp_two_processes_record_per_rank_and_rank_zero_writes(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    # A session of its own, so that a hang kills Lightning's second process too.
    process = subprocess.Popen(
        [sys.executable, str(HERE / "ddp_fit.py"), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail("the 2-process DDP fit hung (killed after 300 s):\n" + err[-5000:])
    assert process.returncode == 0, out[-3000:] + err[-5000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    for r in ranks:
        assert r["model_name"] == "LitLeNet"  # unwrapped from DistributedDataParallel
        assert r["indices"] == [1, 2, 3]
        assert len(r["hooks"]) == len(r["before_step"]) == 3
        for after, local, hooks, before_step in zip(
            r["after"], r["local"], r["hooks"], r["before_step"], strict=True
        ):
            assert set(after) == set(before_step)
            for name in after:
                # after: the averaged gradient the optimizer uses
                assert after[name] == pytest.approx(before_step[name], rel=1e-5)
            for name in local:  # local: this rank's own (kept for the newest pass only)
                assert local[name] == pytest.approx(hooks[name], rel=1e-5)
        assert set(r["local"][-1]) == set(r["after"][-1])
    # Each rank saw different data: the local gradients differ, the averages agree.
    name = "net.fc1.weight"
    assert ranks[0]["local"][-1][name] != pytest.approx(ranks[1]["local"][-1][name], rel=1e-3)
    assert ranks[0]["after"][-1][name] == pytest.approx(ranks[1]["after"][-1][name], rel=1e-5)
    # Rank 0 alone writes the report and the TensorBoard scalars.
    assert ranks[0]["report"] == str(Path(ranks[0]["log_dir"]) / "report.html")
    assert Path(ranks[0]["report"]).exists()
    assert ranks[1]["report"] is None
    scalars = tb_read.scalars(Path(ranks[0]["log_dir"]))
    logged = scalars[f"gradscope/grad_norm/{name}"]
    assert sorted(logged) == [0, 1, 2]
    assert [logged[s] for s in range(3)] == pytest.approx(
        [a[name] for a in ranks[0]["after"]], rel=1e-6
    )
