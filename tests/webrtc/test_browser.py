"""End to end in a real headless Chromium: its fake camera plays a face clip into the page, the page
calls the server (real engine) over WebRTC, and the verdicts and annotated video come back; then the
page's other states (no face, connection lost and retry), a file upload, and a denied camera."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import stream_detector  # noqa: F401  (pylibsrtp before TensorFlow)
from stream_detector.webrtc.server import STATE_KEY, create_app
from tests.webrtc.test_server import loopback_settings, overlay_pixels, serving
from tools.browser import chromium, find_chromium, write_y4m
from tools.media import background, compose, head_patch, moving_face_path, write_video

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 640, 480
FACE_FRAMES = 90  # 3 s of a moving face, then
EMPTY_FRAMES = 60  # 2 s without one (the page must say "no face"), looped by Chromium


@pytest.fixture(scope="module")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        pytest.fail("chromium is not installed: run bash scripts/setup_test_system.sh")
    return path


def camera_frames(astronaut_bgr: np.ndarray) -> list[np.ndarray]:
    patch = head_patch(astronaut_bgr)
    faces = [
        compose(patch, [placement], WIDTH, HEIGHT)
        for placement in moving_face_path(FACE_FRAMES, WIDTH, HEIGHT)
    ]
    return faces + [background(WIDTH, HEIGHT)] * EMPTY_FRAMES


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_browser_without_camera_permission_says_so(chromium_path: str) -> None:
    from tests.webrtc.test_server import FakeAnnotator

    async def scenario() -> tuple[str, str, bool, int]:
        app = create_app(loopback_settings(), FakeAnnotator())
        async with serving(app) as base, chromium(chromium_path, camera_allowed=False) as browser:
            page = await browser.new_page()
            try:
                await page.navigate(f"{base}/")
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("window.streamDetector.state !== 'camera'", 15, "the camera answer")
                return (
                    await page.evaluate("window.streamDetector.state"),
                    await page.evaluate("document.getElementById('status-text').textContent"),
                    await page.evaluate("!document.getElementById('retry').hidden"),
                    len(app[STATE_KEY].peers),
                )
            finally:
                await page.close()

    state, text, retry_offered, peers = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert state == "camera-denied"
    assert "denied" in text and retry_offered
    assert peers == 0


def test_browser_call_shows_live_verdicts_states_and_scans(
    astronaut_bgr: np.ndarray, chromium_path: str, tmp_path: Path
) -> None:
    from stream_detector.pipeline.engine import EngineSettings, build_engine
    from stream_detector.webrtc.annotator import EngineAnnotator
    from stream_detector.webrtc.scanning import build_scanner

    frames = camera_frames(astronaut_bgr)
    clip = write_y4m(tmp_path / "camera.y4m", frames)
    upload = write_video(tmp_path / "upload.avi", frames[:FACE_FRAMES:3])
    not_media = tmp_path / "notes.mp4"
    not_media.write_text("this is not a video\n")
    engine_settings = EngineSettings()
    annotator = EngineAnnotator(build_engine(engine_settings))
    scanner = build_scanner(engine_settings)

    async def scenario() -> dict:
        app = create_app(loopback_settings(), annotator, scanner)
        async with serving(app) as base, chromium(chromium_path, clip) as browser:
            page = await browser.new_page()
            outcome: dict = {"console": page.console}
            try:
                await page.navigate(f"{base}/")

                # The call starts; verdicts for the face and annotated video come back.
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("window.streamDetector.facesSeen >= 10", 60, "verdicts for the face")
                await page.wait_for(
                    "document.getElementById('returned').videoWidth === 640", 20, "returned video"
                )
                played = await page.evaluate("document.getElementById('returned').currentTime")
                await asyncio.sleep(1.0)
                outcome["video_advanced"] = (
                    await page.evaluate("document.getElementById('returned').currentTime")
                ) - played
                outcome["panel"] = await page.evaluate(
                    "[...document.querySelectorAll('#faces .face')].map(item => ["
                    "item.querySelector('.state').textContent, item.querySelector('.p-fake').textContent])"
                )
                outcome["fps_text"] = await page.evaluate("document.getElementById('fps').textContent")

                # A screenshot with a face in view: the overlay is in the returned video.
                for _attempt in range(20):
                    await page.wait_for(
                        "window.streamDetector.lastMessage.faces.length > 0", 10, "a face in view"
                    )
                    shot = await page.screenshot("#returned")
                    pixels = overlay_pixels(decode_png(shot), (0, 0, 10_000, 10_000), margin=0)
                    if pixels > 300:
                        break
                    await asyncio.sleep(0.3)
                (tmp_path / "call.png").write_bytes(shot)
                outcome["screenshot_overlay_pixels"] = pixels
                outcome["last_message"] = await page.evaluate("window.streamDetector.lastMessage")

                # The clip's empty stretch: the page says no face, then the face comes back.
                await page.wait_for("window.streamDetector.history.includes('no-face')", 15, "no face")
                await page.wait_for("window.streamDetector.state === 'live'", 15, "the face again")

                # The server hangs up: the page says the connection is lost, and Retry reconnects.
                state = app[STATE_KEY]
                for peer in list(state.peers.values()):
                    await peer.close()
                await page.wait_for("window.streamDetector.state === 'lost'", 20, "connection lost")
                outcome["lost_retry"] = await page.evaluate("!document.getElementById('retry').hidden")
                before = await page.evaluate("window.streamDetector.messages")
                await page.evaluate("document.getElementById('retry').click()")
                await page.wait_for(
                    f"window.streamDetector.messages > {before + 10}", 30, "messages after retry"
                )
                outcome["peers_after_retry"] = len(state.peers)

                # Upload through the page: a face clip gets a verdict, a text file a one-line error.
                await page.set_file("#file", upload)
                await page.wait_for("window.streamDetector.scan !== null", 120, "the scan result")
                outcome["scan"] = await page.evaluate("window.streamDetector.scan")
                outcome["scan_shown"] = await page.evaluate(
                    "[document.getElementById('scan-verdict').textContent,"
                    " document.querySelectorAll('#scan-tracks tbody tr').length,"
                    " document.getElementById('scan-image').naturalWidth]"
                )
                await page.set_file("#file", not_media)
                await page.wait_for("window.streamDetector.scanError !== null", 60, "the scan error")
                outcome["scan_error"] = await page.evaluate(
                    "document.getElementById('scan-status').textContent"
                )
                outcome["history"] = await page.evaluate("window.streamDetector.history")
            finally:
                await page.close()
        outcome["peers_at_end"] = len(app[STATE_KEY].peers)
        return outcome

    try:
        outcome = asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        annotator.close()
    print(
        json.dumps({key: value for key, value in outcome.items() if key != "console"}, indent=1, default=str)
    )

    assert outcome["video_advanced"] > 0.3, "the returned video is not playing"
    assert outcome["panel"], "no face in the verdict panel"
    assert all(state in ("REAL", "FAKE", "UNCERTAIN") for state, _ in outcome["panel"])
    assert all(0.0 <= float(p_fake) <= 1.0 for _, p_fake in outcome["panel"])
    assert float(outcome["fps_text"]) > 1.0
    face = outcome["last_message"]["faces"][0]
    assert set(face) == {"id", "box", "state", "p_smoothed"} and len(face["box"]) == 4
    # The overlay's state colours fill a box outline in the screenshot; the camera clip has none.
    clip_pixels = max(overlay_pixels(frame, (0, 0, WIDTH, HEIGHT), margin=0) for frame in frames[::10])
    assert clip_pixels < 100, f"the clip itself has {clip_pixels} overlay-coloured pixels"
    assert outcome["screenshot_overlay_pixels"] > 300, "no overlay in the screenshot"
    assert outcome["lost_retry"] and outcome["peers_after_retry"] == 1
    assert outcome["history"].index("lost") < len(outcome["history"]) - 1, "never recovered after retry"
    scan, (shown_verdict, track_rows, image_width) = outcome["scan"], outcome["scan_shown"]
    assert scan["verdict"] in ("REAL", "FAKE", "UNCERTAIN") and shown_verdict == scan["verdict"]
    assert track_rows >= 1 and image_width > 0
    assert "notes.mp4" in outcome["scan_error"] and "\n" not in outcome["scan_error"]
    assert outcome["peers_at_end"] == 0
