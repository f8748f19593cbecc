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
from aiohttp import web

import stream_detector  # noqa: F401  (pylibsrtp before TensorFlow)
from stream_detector.webrtc.server import STATE_KEY, create_app
from tests.webrtc.test_server import loopback_settings, overlay_pixels, serving
from tools.browser import chromium, find_chromium, write_y4m
from tools.media import Placement, background, compose, head_patch, moving_face_path, write_video, write_webm

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
                await page.navigate(f"{base}/?source=camera")
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
                await page.navigate(f"{base}/?source=camera")

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
                outcome["last_message"] = await page.evaluate("window.streamDetector.lastFaceMessage")

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
    assert {"id", "box", "state", "p_smoothed", "too_small", "classified"} <= set(face) <= {
        "id",
        "box",
        "state",
        "p_smoothed",
        "too_small",
        "classified",
        "thumbnail",
    } and len(face["box"]) == 4
    assert outcome["last_message"]["source"] == "camera" and "call" in outcome["last_message"]
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


CALL_TITLE = "Call - weekly sync"
CALL_WIDTH, CALL_HEIGHT = 1280, 720


def call_frames(astronaut_bgr: np.ndarray, count: int = 90) -> list[np.ndarray]:
    """A two-person call: two heads side by side, swaying a little (gallery view)."""
    patch = head_patch(astronaut_bgr)
    frames = []
    for index in range(count):
        sway = 20 * np.sin(index / 8.0)
        placements = [Placement(150 + sway, 200, 1.3), Placement(800 - sway, 200, 1.3)]
        frames.append(compose(patch, placements, CALL_WIDTH, CALL_HEIGHT))
    return frames


async def serve_call_tab(directory: Path, clip: Path):
    """The 'meeting' tab: a page titled like a call, playing the clip in a <video>, on its own port."""
    page = (
        f"<!doctype html><title>{CALL_TITLE}</title>"
        "<body style='margin:0;background:#000'>"
        f"<video src='/clip.webm' autoplay muted loop playsinline width={CALL_WIDTH} height={CALL_HEIGHT}></video>"
    )
    (directory / "call.html").write_text(page)
    call_app = web.Application()
    call_app.router.add_get("/call.html", lambda request: web.FileResponse(directory / "call.html"))
    call_app.router.add_get("/clip.webm", lambda request: web.FileResponse(clip))
    runner = web.AppRunner(call_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/call.html"


def test_the_call_check_judges_every_face_of_a_shared_call_tab(
    astronaut_bgr: np.ndarray, chromium_path: str, tmp_path: Path
) -> None:
    from stream_detector.pipeline.engine import EngineSettings, build_engine
    from stream_detector.webrtc.annotator import EngineAnnotator

    clip = write_webm(tmp_path / "clip.webm", call_frames(astronaut_bgr))
    annotator = EngineAnnotator(build_engine(EngineSettings()))
    flags = [f"--auto-select-tab-capture-source-by-title={CALL_TITLE}", "--disable-popup-blocking"]

    async def scenario() -> dict:
        app = create_app(loopback_settings(), annotator)
        runner, call_url = await serve_call_tab(tmp_path, clip)
        outcome: dict = {}
        try:
            async with (
                serving(app) as base,
                chromium(chromium_path, extra_arguments=flags, fake_devices=False) as browser,
            ):
                call = await browser.new_page()
                await call.navigate(call_url)
                await call.wait_for(
                    "document.querySelector('video').currentTime > 0.2", 20, "the call to play"
                )
                page = await browser.new_page()
                outcome["console"] = page.console
                await page.navigate(f"{base}/")
                outcome["default_source"] = await page.evaluate(
                    "document.querySelector('input[name=source]:checked').value"
                )
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("window.streamDetector.rows >= 2", 60, "a row for each face")
                await page.wait_for(
                    "[...document.querySelectorAll('#faces .thumbnail')].filter(i => i.naturalWidth > 0).length >= 2",
                    20,
                    "a thumbnail for each face",
                )
                await page.wait_for("window.streamDetector.headline !== null", 10, "the call's headline")
                outcome["message"] = await page.evaluate("window.streamDetector.lastMessage")
                outcome["rows"] = await page.evaluate(
                    "[...document.querySelectorAll('#faces .face')].map(item => [item.dataset.id,"
                    " item.querySelector('.state').textContent])"
                )
                outcome["headline"] = await page.evaluate(
                    "document.getElementById('headline-text').textContent"
                )
                outcome["checked_for"] = await page.evaluate(
                    "document.getElementById('checked-for').textContent"
                )
                # The returned video: the shared picture with a box on each face.
                for _attempt in range(20):
                    shot = decode_png(await page.screenshot("#returned"))
                    half = shot.shape[1] // 2
                    left = overlay_pixels(shot[:, :half], (0, 0, 10_000, 10_000), margin=0)
                    right = overlay_pixels(shot[:, half:], (0, 0, 10_000, 10_000), margin=0)
                    if left > 150 and right > 150:
                        break
                    await asyncio.sleep(0.3)
                cv2.imwrite(str(tmp_path / "shared.png"), shot)
                outcome["boxes"] = (left, right)

                # The browser's "Stop sharing" ends the track; a track the page stops itself fires no
                # 'ended' in Chromium, so the event is dispatched as the browser would.
                await page.evaluate(
                    "(() => { const track = document.getElementById('local').srcObject.getVideoTracks()[0];"
                    " track.stop(); track.dispatchEvent(new Event('ended')); })()"
                )
                await page.wait_for("window.streamDetector.state === 'ended'", 20, "the end of the check")
                outcome["after_end"] = await page.evaluate(
                    "[window.streamDetector.rows, document.getElementById('headline-text').textContent,"
                    " document.getElementById('status-text').textContent]"
                )
                await page.close()
                await call.close()
            outcome["peers_at_end"] = len(app[STATE_KEY].peers)
        finally:
            await runner.cleanup()
        return outcome

    try:
        outcome = asyncio.run(asyncio.wait_for(scenario(), 240))
    finally:
        annotator.close()
    print(json.dumps({k: v for k, v in outcome.items() if k != "console"}, indent=1, default=str)[:3000])

    assert outcome["default_source"] == "screen"
    message = outcome["message"]
    assert message["source"] == "screen" and message["width"] >= 1000, message["width"]
    assert len(message["faces"]) == 2 and all(not face["too_small"] for face in message["faces"])
    assert message["smallest_judged_px"] == 48
    assert len(outcome["rows"]) >= 2 and all(
        state in ("REAL", "FAKE", "UNCERTAIN") for _, state in outcome["rows"]
    )
    assert [int(row_id) for row_id, _ in outcome["rows"]] == sorted(
        int(row_id) for row_id, _ in outcome["rows"]
    )
    assert outcome["headline"] in (
        "no sign of a deepfake so far",
        "not enough evidence yet",
    ) or outcome["headline"].endswith("look manipulated")
    assert outcome["checked_for"].startswith("checked for") and "face(s) seen" in outcome["checked_for"]
    assert min(outcome["boxes"]) > 150, f"a face without its box in the returned video: {outcome['boxes']}"
    rows, headline, status = outcome["after_end"]
    assert rows >= 2 and headline == outcome["headline"] or headline, headline
    assert "Sharing stopped" in status and "Summary:" in status
    assert outcome["peers_at_end"] == 0


def test_the_camera_picker_lists_every_camera(chromium_path: str) -> None:
    from tests.webrtc.test_server import FakeAnnotator

    # Two fake cameras: a real one and, say, OBS's virtual camera.
    flags = ["--use-fake-device-for-media-stream=device-count=2"]

    async def scenario() -> tuple[list[str], list[str]]:
        app = create_app(loopback_settings(), FakeAnnotator())
        async with serving(app) as base, chromium(chromium_path, extra_arguments=flags) as browser:
            page = await browser.new_page()
            try:
                await page.navigate(f"{base}/?source=camera")
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("window.streamDetector.messages >= 3", 30, "verdicts from the camera")
                await page.wait_for("window.streamDetector.cameras.length >= 2", 10, "both cameras listed")
                return (
                    await page.evaluate("window.streamDetector.cameras"),
                    await page.evaluate(
                        "[...document.getElementById('camera-select').options].map(o => o.textContent)"
                    ),
                )
            finally:
                await page.close()

    cameras, options = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert len(cameras) == 2 and all(cameras)
    assert options == ["default camera", *cameras]


def test_switching_source_mid_call_keeps_the_connection_and_the_panel(
    astronaut_bgr: np.ndarray, chromium_path: str, tmp_path: Path
) -> None:
    from tests.webrtc.test_server import FakeAnnotator

    camera = write_y4m(tmp_path / "camera.y4m", camera_frames(astronaut_bgr)[:FACE_FRAMES])

    async def scenario() -> dict:
        app = create_app(loopback_settings(), FakeAnnotator())
        async with serving(app) as base, chromium(chromium_path, camera) as browser:
            page = await browser.new_page()
            try:
                await page.navigate(f"{base}/?source=camera")
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("window.streamDetector.messages >= 10", 30, "verdicts from the camera")
                peers = sorted(app[STATE_KEY].peers)
                outcome = {"first_source": await page.evaluate("window.streamDetector.lastMessage.source")}
                sources = []
                # To the (fake) screen and back: each time the same connection, no new offer.
                for kind, switches in (("screen", 1), ("camera", 2)):
                    await page.evaluate(f"document.querySelector('input[value={kind}]').click()")
                    await page.wait_for(
                        f"window.streamDetector.switches === {switches}", 20, f"the switch to {kind}"
                    )
                    await page.wait_for(
                        f"window.streamDetector.lastMessage.source === '{kind}'",
                        20,
                        f"the server to see {kind}",
                    )
                    before = await page.evaluate("window.streamDetector.messages")
                    await page.wait_for(
                        f"window.streamDetector.messages > {before + 10}",
                        20,
                        f"verdicts after the switch to {kind}",
                    )
                    sources.append(await page.evaluate("window.streamDetector.lastMessage.source"))
                outcome["sources"] = sources
                outcome["same_peer"] = sorted(app[STATE_KEY].peers) == peers and len(peers) == 1
                outcome["rows"] = await page.evaluate("window.streamDetector.rows")
                outcome["state"] = await page.evaluate("window.streamDetector.state")
                return outcome
            finally:
                await page.close()

    outcome = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert outcome["first_source"] == "camera" and outcome["sources"] == ["screen", "camera"]
    assert outcome["same_peer"], "switching made a new call"
    assert outcome["rows"] >= 1 and outcome["state"] == "live"
