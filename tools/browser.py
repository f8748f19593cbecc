"""A headless Debian Chromium driven over the Chrome DevTools Protocol (CDP), for end-to-end tests.

No browser is downloaded: this uses /usr/bin/chromium (scripts/setup_test_system.sh installs it). The
fake camera plays a Y4M file; every flag that would reach the network is off, and host resolution maps
everything but loopback to nothing, so the only traffic is to the test server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import cv2
import numpy as np

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


def write_y4m(path: Path, frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """BGR frames as an uncompressed 4:2:0 Y4M clip, the format Chromium's fake camera reads."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as output:
        output.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            output.write(b"FRAME\n")
            output.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


class CdpError(RuntimeError):
    pass


class Page:
    """One tab: send CDP commands, evaluate JavaScript, take screenshots, fill file inputs."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.console: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(data["error"].get("message", str(data["error"]))))
                    else:
                        future.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(
                    " ".join(str(arg.get("value", arg.get("description", ""))) for arg in args)
                )
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.console.append(f"exception: {details.get('exception', {}).get('description', details)}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the browser closed the DevTools connection"))

    async def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        command_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        await self._socket.send_str(json.dumps({"id": command_id, "method": method, "params": params or {}}))
        return await asyncio.wait_for(future, timeout)

    async def evaluate(self, expression: str, timeout: float = 30.0):
        """The value of a JavaScript expression (promises are awaited); page exceptions raise CdpError."""
        result = await self.send(
            "Runtime.evaluate",
            # As if clicked: getDisplayMedia() and audio need a user gesture.
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, what: str | None = None):
        """Poll ``expression`` until it is truthy; its value, or an AssertionError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or expression}")
            await asyncio.sleep(0.2)

    async def navigate(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'", 20, f"{url} to load")

    async def screenshot(self, selector: str | None = None) -> bytes:
        """A PNG of the page, or of one element's box."""
        params: dict = {"format": "png"}
        if selector is not None:
            box = await self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
            )
            params["clip"] = {**box, "scale": 1}
        result = await self.send("Page.captureScreenshot", params)
        return base64.b64decode(result["data"])

    async def set_file(self, selector: str, path: Path) -> None:
        """Choose ``path`` in a file input, as a person picking it would (fires its change event)."""
        await self.send("DOM.enable")
        document = await self.send("DOM.getDocument")
        node = await self.send(
            "DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": selector}
        )
        await self.send("DOM.setFileInputFiles", {"nodeId": node["nodeId"], "files": [str(path)]})

    async def close(self) -> None:
        await self._socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Chromium:
    """A headless Chromium process with a fresh profile, and the CDP connection to one tab."""

    def __init__(
        self,
        executable: str,
        fake_video: Path | None = None,
        window: tuple[int, int] = (1280, 1000),
        camera_allowed: bool = True,
        extra_arguments: Sequence[str] = (),
        fake_devices: bool = True,
    ) -> None:
        """``fake_devices``: Chromium's fake camera and permission prompt. Off for tab capture: with
        them getDisplayMedia() gets a generated picture (or NotReadableError) instead of the tab that
        ``--auto-select-tab-capture-source-by-title`` names."""
        self.executable = executable
        self.extra_arguments = list(extra_arguments)
        self.fake_devices = fake_devices
        self.camera_allowed = camera_allowed
        self.fake_video = fake_video
        self.window = window
        self.profile = Path(tempfile.mkdtemp(prefix="stream-detector-chromium-"))
        self.process: subprocess.Popen | None = None
        self.http: aiohttp.ClientSession | None = None
        self.port: int | None = None
        self.log_path = self.profile / "chromium.log"
        self._log = None

    def arguments(self) -> list[str]:
        arguments = [
            self.executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
            # With fake devices, the fake permission prompt answers every camera request: allow, or
            # deny. Tab capture needs neither (and fails with the fake prompt: NotReadableError).
            *(
                [
                    "--use-fake-ui-for-media-stream"
                    if self.camera_allowed
                    else "--use-fake-ui-for-media-stream=deny",
                    *(
                        []  # the caller's own (e.g. =device-count=2): Chromium reads the first one only
                        if any(
                            a.startswith("--use-fake-device-for-media-stream") for a in self.extra_arguments
                        )
                        else ["--use-fake-device-for-media-stream"]
                    ),
                ]
                if self.fake_devices
                else []
            ),
            f"--window-size={self.window[0]},{self.window[1]}",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ]
        if self.fake_video is not None:
            arguments.append(f"--use-file-for-fake-video-capture={self.fake_video}")
        arguments += self.extra_arguments
        arguments.append("about:blank")
        return arguments

    async def start(self, timeout: float = 30.0) -> None:
        # A file, not a pipe: Chromium logs a lot, and an unread pipe would block it once full.
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.arguments(), stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if self.process.poll() is not None:
                error = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {self.process.returncode}: {error}")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        self.port = int(port_file.read_text().splitlines()[0])
        self.http = aiohttp.ClientSession()

    async def new_page(self) -> Page:
        assert self.http is not None and self.port is not None
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
            target = await response.json(content_type=None)
        socket = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        return Page(socket)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 10)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.asynccontextmanager
async def chromium(
    executable: str,
    fake_video: Path | None = None,
    camera_allowed: bool = True,
    extra_arguments: Sequence[str] = (),
    fake_devices: bool = True,
) -> AsyncIterator[Chromium]:
    """``extra_arguments``: e.g. ``--auto-select-tab-capture-source-by-title=TITLE`` (with
    ``--disable-popup-blocking``), which makes getDisplayMedia() pick that tab without a prompt."""
    browser = Chromium(
        executable,
        fake_video,
        camera_allowed=camera_allowed,
        extra_arguments=extra_arguments,
        fake_devices=fake_devices,
    )
    try:
        await browser.start()
        yield browser
    finally:
        await browser.close()
