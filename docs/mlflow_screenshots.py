"""The MLflow guide's screenshots (docs/mlflow.md): the real demo on a local MLflow server, seen in headless Chromium.

Runs ``make demo``'s sweep (``configs/demo.yaml``: the teacher and the five students) against a fresh
``mlflow server`` on 127.0.0.1, and saves

- ``docs/img/mlflow-sweep-run.png``: the sweep's run page, its description holding Table 1 and the stages;
- ``docs/img/mlflow-compare-chart.png``: the development CCC of the teacher and the students, per epoch.

Needs Debian's ``chromium``; takes as long as ``make demo`` (the runs must be on this server, so the
demo runs again here)::

    python docs/mlflow_screenshots.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # matplotlib's dependency

from ctsl_hpc.config import load_config
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.track.server import TRAINING_VIEW, training_runs_url
from tests.chromium import Page, open_page
from tests.mlflow_fixtures import MlflowServer

OUT = REPO / "docs" / "img"
EXPERIMENT = load_config(None).name  # the demo's
CLOSE_ASSISTANT = "button[aria-label=Close]"  # MLflow's assistant panel opens by itself on a first visit
EXPAND_PARENTS = """(() => { const b = document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]');
  b.forEach((x) => x.click()); return b.length; })()"""
CHART_SEARCH = "input[placeholder='Search metric charts']"
FULLSCREEN = "button[data-component-id=fullscreen_button_chartcard]"


def run_sweep(work: Path, url: str) -> Path:
    """The demo's sweep, tracked on ``url``; its work directory (named ``demo``, as ``make demo``'s)."""
    workdir = work / "demo"
    if main(["sweep", "--workdir", str(workdir), f"tracking.uri={url}"]) != 0:
        raise RuntimeError("the sweep failed")
    return workdir


async def sweep_page(page: Page, url: str, png: Path) -> None:
    await page.goto(url)
    await page.wait_for_text(["Table 1", "Show more"], timeout_s=60)
    await page.click(selector=CLOSE_ASSISTANT)
    if not await page.click("Show more"):
        raise RuntimeError("the description has no 'Show more'")
    await page.wait_for_text(["Stages", "eval"], timeout_s=10)
    await asyncio.sleep(1)  # let the layout settle
    await page.screenshot(png)


async def comparison_chart(page: Page, url: str, png: Path, parent_name: str) -> None:
    await page.goto(url)
    await page.wait_for_text([parent_name], timeout_s=60)
    if await page.evaluate(EXPAND_PARENTS) < 1:
        raise RuntimeError("no sweep run to expand")
    await page.wait_for_text(["student/RM+TL+CL", "teacher"], timeout_s=30)
    if not await page.click(selector=CHART_SEARCH):
        raise RuntimeError("no chart search box")
    await page.call("Input.insertText", text="dev/ccc_mean")
    await asyncio.sleep(2)
    if not await page.click(selector=FULLSCREEN):
        raise RuntimeError("no dev/ccc_mean chart")
    await asyncio.sleep(2)
    await page.screenshot(png)


async def screenshots(run_page: str, runs_page: str, profile: Path, parent_name: str) -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    shots = [OUT / "mlflow-sweep-run.png", OUT / "mlflow-compare-chart.png"]
    async with open_page(profile, width=1800, height=1100) as page:
        await sweep_page(page, run_page, shots[0])
        await comparison_chart(page, f"{runs_page}&compareRunsMode=CHART", shots[1], parent_name)
    return shots


def shrink(png: Path) -> None:
    """A 256-colour palette: the UI's flat colours and the runs' line colours survive, at a fraction of the size."""
    Image.open(png).convert("RGB").quantize(colors=256).save(png, optimize=True)


def run() -> None:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="ctsl-screens-") as tmp:
        server = MlflowServer(Path(tmp) / "server")
        server.root.mkdir()
        server.start()
        try:
            run_sweep(Path(tmp), server.url)
            client = MlflowClient(server.url)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            parent = client.search_runs([experiment.experiment_id], "tags.`ctsl.run_key` = 'parent'")[0]
            runs_page = training_runs_url(server.url, EXPERIMENT)
            runs = f"{server.url}/#/experiments/{experiment.experiment_id}/runs"
            run_page = f"{runs}/{parent.info.run_id}?{TRAINING_VIEW}"
            profile = Path(tmp) / "chromium"
            profile.mkdir()
            for png in asyncio.run(screenshots(run_page, runs_page, profile, parent.info.run_name)):
                shrink(png)
                print(f"wrote {png.relative_to(REPO)} ({png.stat().st_size // 1024} KiB)")
        finally:
            server.stop()


if __name__ == "__main__":
    run()
