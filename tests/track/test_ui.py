"""The MLflow UI lists a sweep's run tree: headless Chromium driven over the DevTools protocol.

The browser is :mod:`tests.chromium`: open the experiment's runs page, expand the parent run, read the
rendered text, save a screenshot (under the test's tmp dir, and copied to ``$CTSL_TEST_ARTIFACTS``
when set).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ctsl_hpc.config import load_config
from ctsl_hpc.track.runs import Tracker
from tests.chromium import open_page

if TYPE_CHECKING:
    from tests.mlflow_fixtures import MlflowServer


EXPAND_PARENTS = """
(() => {
  const buttons = document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]');
  buttons.forEach((b) => b.click());
  return buttons.length;
})()
"""


async def _render_run_tree(url: str, parent: str, children: list[str], png: Path, profile: Path) -> str:
    async with open_page(profile) as page:
        await page.goto(url)
        await page.wait_for_text([parent], timeout_s=30)
        assert await page.evaluate(EXPAND_PARENTS) >= 1, "no expandable parent run in the table"
        text = await page.wait_for_text([parent, *children], timeout_s=15)
        await page.screenshot(png)
        return text


def test_mlflow_ui_lists_parent_teacher_and_students(mlflow_server: MlflowServer, tmp_path: Path, experiment: str):
    tracker = Tracker(tmp_path / "sweep", mlflow_server.url, experiment, system_metrics=False)
    parent = tracker.parent(config=load_config(None, [f"name={experiment}"]))
    children = ["teacher", "student/RH", "student/RM", "student/RM+TL", "student/RM+CL", "student/RM+TL+CL"]
    for epoch, key in enumerate(children, start=1):
        with tracker.child(key) as run:
            run.log_metrics({"dev/ccc_mean": 0.1 * epoch}, step=1)
    parent.finish()
    experiment_id = mlflow_server.api("experiments/get-by-name", experiment_name=experiment)["experiment"][
        "experiment_id"
    ]

    png = tmp_path / "mlflow-ui-runs.png"
    url = f"{mlflow_server.url}/#/experiments/{experiment_id}/runs"
    text = asyncio.run(_render_run_tree(url, "sweep sweep", children, png, tmp_path / "chromium-profile"))
    if os.environ.get("CTSL_TEST_ARTIFACTS"):
        Path(os.environ["CTSL_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(os.environ["CTSL_TEST_ARTIFACTS"]) / png.name)

    lines = {line.strip() for line in text.splitlines()}
    missing = [name for name in ["sweep sweep", *children] if name not in lines]
    assert not missing, f"runs not listed in the UI: {missing}; screenshot {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
