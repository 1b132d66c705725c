"""``benchmarks/gpu_check.sh --cpu-smoke``: the GPU check's whole path on the CPU, so that it cannot rot.

The check itself runs on a GPU machine (benchmarks/README.md); here the same script trains the tiny
model through every part (DeepSpeed and DDP, the cache on and off, the Ray trial function without
Ray, the evaluation) and writes its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parts = {(row["part"].split(" (")[0].split(",")[0], row["engine"]) for row in result["rows"]}
    assert {("teacher", "deepspeed"), ("teacher", "ddp"), ("student RM+TL+CL", "deepspeed"), ("student RM+TL+CL", "ddp"),
            ("evaluation", "-"), ("Ray trial function", "deepspeed")} <= parts
    live = next(r for r in result["rows"] if "live teacher" in r["part"])
    assert live["step_s"] > 0 and live["audio_s_per_s"] > 0
    assert result["throughput_for_cost"]["train"] > 0 and result["throughput_for_cost"]["forward"] > 0
    trial = next(r for r in result["rows"] if r["part"].startswith("Ray trial function"))
    assert -1 <= trial["dev_ccc_mean"] <= 1
    assert not result["imported"]["ray"] and not result["imported"]["ctsl_hpc.track"]  # neither Ray nor our MLflow layer
    assert "| teacher | deepspeed |" in (tmp_path / "out" / "gpu_check.md").read_text()
