"""Headless Chromium over the DevTools protocol: open a page, read its rendered text, take screenshots.

Needs Debian's ``chromium`` (``apt-get install -y --no-install-recommends chromium``). The MLflow UI is
a JavaScript app, so tests (and ``docs/mlflow_screenshots.py``) drive a real browser through
aiohttp's WebSocket client (an MLflow dependency) instead of reading the HTML.
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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
]
CLICKABLE = "button, a, [role=menuitem], [role=option], [role=tab]"


class Page:
    """A Chromium page over the DevTools protocol (the few calls the tests and the docs script need)."""

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
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def text(self) -> str:
        """The page's visible text."""
        return await self.evaluate("document.body ? document.body.innerText : ''") or ""

    async def wait_for_text(self, texts: list[str], timeout_s: float) -> str:
        """Poll (bounded) until the page's visible text contains every one of ``texts``; the last text read."""
        deadline = time.monotonic() + timeout_s
        while True:
            body = await self.text()
            if all(text in body for text in texts) or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.25)

    async def click(self, text: str | None = None, selector: str = CLICKABLE, index: int = 0) -> bool:
        """Click (a real mouse press, as menus and selects need) the ``index``-th visible element
        matching ``selector`` (and reading ``text``, when given); False when there is none."""
        box = await self.evaluate(
            "((selector, text, index) => { const hits = [...document.querySelectorAll(selector)].filter("
            "(e) => e.offsetParent !== null && (text === null || e.textContent.trim() === text));"
            " const e = hits[index]; if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })"
            f"({json.dumps(selector)}, {json.dumps(text)}, {int(index)})"
        )
        if box is None:
            return False
        for event in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=event, x=box[0], y=box[1], button="left", clickCount=1)
        return True

    async def screenshot(self, png: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        png.write_bytes(base64.b64decode(shot["data"]))
        return png


def chromium_binary() -> str:
    """Debian's chromium, or a clear error naming the package."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("Debian's chromium is needed: apt-get install -y --no-install-recommends chromium")
    return binary


def _start_browser(profile: Path, width: int, height: int) -> subprocess.Popen:
    return subprocess.Popen(
        [chromium_binary(), *CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


@asynccontextmanager
async def open_page(profile: Path, width: int = 1400, height: int = 900) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own profile folder) and its first page; the browser is stopped after."""
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a reused profile keeps the last browser's port
    proc = _start_browser(profile, width, height)
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                yield page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the browser and its renderer/GPU helpers
        proc.wait(timeout=20)
