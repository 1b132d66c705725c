"""The MLflow UI lists a sweep's run tree: headless Chromium driven over the DevTools protocol.

Needs Debian's ``chromium`` (``apt-get install -y --no-install-recommends chromium``). The page is a
JavaScript app, so the test drives the browser (aiohttp's WebSocket client, an MLflow dependency):
open the experiment's runs page, expand the parent run, read the rendered text, save a screenshot
(under the test's tmp dir, and copied to ``$CTSL_TEST_ARTIFACTS`` when set).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from ctsl_hpc.config import load_config
from ctsl_hpc.track.runs import Tracker

if TYPE_CHECKING:
    from tests.mlflow_fixtures import MlflowServer

pytest_plugins = ["tests.mlflow_fixtures"]  # the session-wide `mlflow_server` fixture

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
    "--remote-debugging-port=0",
]
EXPAND_PARENTS = """
(() => {
  const buttons = document.querySelectorAll('button[data-component-id*="runnamecellrenderer"]');
  buttons.forEach((b) => b.click());
  return buttons.length;
})()
"""


class _Page:
    """A Chromium page over the DevTools protocol (just the calls this test needs)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"{method}: DevTools connection closed")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for_text(self, texts: list[str], timeout_s: float) -> str:
        """Poll (bounded) until the page's visible text contains every one of ``texts``."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(text in body for text in texts) or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.25)


async def _render_run_tree(url: str, parent: str, children: list[str], png: Path, profile: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is needed: apt-get install -y --no-install-recommends chromium")
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with code {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = _Page(ws)
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                await page.wait_for_text([parent], timeout_s=30)
                assert await page.evaluate(EXPAND_PARENTS) >= 1, "no expandable parent run in the table"
                text = await page.wait_for_text([parent, *children], timeout_s=15)
                shot = await page.call("Page.captureScreenshot", format="png")
                png.write_bytes(base64.b64decode(shot["data"]))
                return text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the browser and its renderer/GPU helpers
        proc.wait(timeout=20)


def test_mlflow_ui_lists_parent_teacher_and_students(mlflow_server: MlflowServer, tmp_path: Path):
    experiment = f"ui-{uuid.uuid4().hex[:8]}"
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
