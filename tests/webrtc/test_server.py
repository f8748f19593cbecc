"""The WebRTC server in process: signalling, the worker, cleanup, limits, token, /scan; then two aiortc
peers on loopback, first with a fake annotator (fast) and then with the real engine (slow)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import gc
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

import stream_detector  # noqa: F401  (pylibsrtp before TensorFlow)
from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.types import Frame, Verdict, VerdictState
from stream_detector.webrtc.ice import filter_candidates, host_addresses_for, restrict_host_addresses
from stream_detector.webrtc.latency import MarkerJitterBuffer
from stream_detector.webrtc.peer import PeerSession
from stream_detector.webrtc.server import STATE_KEY, RateLimiter, ScanResult, ServerSettings, create_app
from stream_detector.webrtc.signalling import OfferError, parse_offer
from stream_detector.webrtc.worker import Annotated, FrameWorker
from tools.waiting import wait_until_async as wait_until
from tools.webrtc_client import StampedTrack, read_stamp, start_call, write_stamp

# Subprocesses, real servers, threads on real clocks or TensorFlow: not the fast lane (make test-fast).
pytestmark = pytest.mark.slow

LOOPBACK = ("127.0.0.1",)
FAKE_BOX = (200.0, 140.0, 360.0, 300.0)
FAKE_COLOUR_BGR = (255, 0, 255)  # magenta: absent from the plain test frames


class FakeAnnotator:
    """Stands in for engine + overlay: one UNCERTAIN face at FAKE_BOX, drawn as a magenta square."""

    def __init__(self, delay_s: float = 0.0, release: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.release = release
        self.batches: list[list[str]] = []
        self.forgotten: list[str] = []
        self.threads: set[str] = set()

    def annotate(self, frames: Sequence[Frame], dropped: Sequence[int]) -> list[Annotated]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([frame.source_id for frame in frames])
        if self.release is not None:
            self.release.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        results = []
        for frame in frames:
            image = frame.image.copy()
            x1, y1, x2, y2 = (int(value) for value in FAKE_BOX)
            cv2.rectangle(image, (x1, y1), (x2, y2), FAKE_COLOUR_BGR, 6)
            verdict = Verdict(7, FAKE_BOX, VerdictState.UNCERTAIN, 0.5, frame.timestamp_ms)
            results.append(Annotated(image, [verdict]))
        return results

    def forget(self, source_id: str) -> None:
        self.forgotten.append(source_id)


class FakeScanner:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def scan(self, path: Path, name: str, progress: Callable[[float], None]) -> ScanResult:
        self.paths.append(path)
        data = path.read_bytes()
        if not data.startswith(b"MEDIA"):
            raise StreamDetectorError(f"{name} is not an image or video file")
        progress(0.5)
        report = {"verdict": "UNCERTAIN", "p_fake": 0.5, "tracks": [{"id": 1, "verdict": "UNCERTAIN"}]}
        return ScanResult(report=report, annotated_jpeg=b"\xff\xd8jpeg")


def plain_frame(index: int) -> np.ndarray:
    image = np.full((480, 640, 3), 110, np.uint8)
    image[:, : 40 + (index % 30) * 4] = 140  # something moving, so the encoder keeps sending
    return image


def run(coroutine) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """The app on 127.0.0.1 (a free port), with this process's ICE kept on loopback."""
    with restrict_host_addresses(LOOPBACK):
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


def loopback_settings(**overrides) -> ServerSettings:
    return ServerSettings(ice_addresses=LOOPBACK, remote_addresses=LOOPBACK, **overrides)


# --- signalling ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"type": "offer"}).encode(), 'no "sdp"'),
        (json.dumps({"sdp": "v=0\r\nm=video 9", "type": "answer"}).encode(), '"type" must be "offer"'),
        (json.dumps({"sdp": "hello", "type": "offer"}).encode(), "start with v=0"),
        (json.dumps({"sdp": "v=0\r\nm=audio 9 UDP", "type": "offer"}).encode(), "no video track"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (json.dumps({"sdp": "v=0\r\nm=video\r\n", "type": "offer"}).encode(), "lacks a=ice-ufrag:"),
    ],
)
def test_malformed_offers_are_refused_with_a_one_line_reason(body: bytes, reason: str) -> None:
    with pytest.raises(OfferError) as raised:
        parse_offer(body)
    assert reason in str(raised.value)
    assert "\n" not in str(raised.value)


def test_candidates_off_the_allowed_addresses_are_dropped() -> None:
    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 50001 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 4f1c.local 50002 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    kept = filter_candidates(sdp, ["127.0.0.1"])
    assert "127.0.0.1 50001" in kept
    assert "192.0.2.2" not in kept and ".local" not in kept
    assert "a=end-of-candidates" in kept
    assert filter_candidates(sdp, None) == sdp


def test_host_addresses_follow_the_bind_address() -> None:
    assert host_addresses_for("127.0.0.1") == ["127.0.0.1"]
    assert host_addresses_for("localhost") == ["127.0.0.1"]
    assert host_addresses_for("0.0.0.0") is None
    assert host_addresses_for("192.0.2.2") == ["192.0.2.2"]


def test_restricted_ice_gathers_only_loopback_candidates() -> None:
    from aioice import Connection

    async def gather() -> list[str]:
        connection = Connection(ice_controlling=True)
        await connection.gather_candidates()
        hosts = [candidate.host for candidate in connection.local_candidates]
        await connection.close()
        return hosts

    with restrict_host_addresses(LOOPBACK):
        assert run(gather()) == ["127.0.0.1"]


def test_stamps_survive_a_round_trip_and_reject_damage() -> None:
    image = plain_frame(0)
    write_stamp(image, 1234)
    assert read_stamp(image) == 1234
    # A lossy codec softens edges; the stamp reads through mild noise.
    noisy = np.clip(image.astype(np.int16) + np.random.default_rng(0).integers(-40, 40, image.shape), 0, 255)
    assert read_stamp(noisy.astype(np.uint8)) == 1234
    image[-24:-8, 8:24] = 255 - image[-24:-8, 8:24]  # flip the first bit
    assert read_stamp(image) is None


def _packet(sequence: int, timestamp: int, marker: int) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=sequence, timestamp=timestamp, marker=marker)
    packet._data = bytes([sequence])
    return packet


def test_marker_bit_releases_a_frame_without_waiting_for_the_next() -> None:
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(_packet(10, 3000, 0))[1] is None
    frame = buffer.add(_packet(11, 3000, 1))[1]
    assert frame is not None and frame.timestamp == 3000 and frame.data == bytes([10, 11])
    # Without a marker, the next frame's first packet completes the previous one (aiortc's rule).
    assert buffer.add(_packet(12, 6000, 0))[1] is None
    frame = buffer.add(_packet(13, 9000, 0))[1]
    assert frame is not None and frame.timestamp == 6000
    # A padding-only packet between frames is not handed over as a frame of its own.
    buffer.add(_packet(14, 9000, 1))
    padding = _packet(15, 9000, 0)
    padding._data = b""
    assert buffer.add(padding)[1] is None
    frame = buffer.add(_packet(16, 12000, 1))[1]
    assert frame is not None and frame.timestamp == 12000 and frame.data == bytes([16])


# --- the worker ----------------------------------------------------------------------------------


def _video_frame(index: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(plain_frame(index), format="bgr24")
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def test_worker_keeps_only_the_newest_frame_and_batches_sources() -> None:
    release = threading.Event()
    annotator = FakeAnnotator(release=release)
    worker = FrameWorker(annotator)
    delivered: dict[str, list[int]] = {"a": [], "b": []}
    got_all = threading.Event()

    def deliver_to(name: str):
        def deliver(processed) -> None:
            delivered[name].append(processed.video_frame.pts)
            if delivered["a"] and delivered["b"] and len(delivered["a"]) >= 2:
                got_all.set()

        return deliver

    worker.add_source("a", deliver_to("a"))
    worker.add_source("b", deliver_to("b"))
    worker.start()
    try:
        worker.submit("a", _video_frame(0), 0.0)
        time.sleep(0.2)  # the worker now holds frame 0 and waits on `release`
        for index in range(1, 6):
            worker.submit("a", _video_frame(index), float(index))
        worker.submit("b", _video_frame(0), 0.0)
        release.set()
        assert got_all.wait(5)
    finally:
        worker.close(timeout=5)
    # Frames 1..4 of "a" were replaced while the engine was busy; 5 went out with b's, in one batch.
    assert delivered["a"] == [0, 5 * 3000]
    assert annotator.batches[1] == ["a", "b"]
    assert annotator.threads == {"webrtc-engine"}
    assert not worker.alive


def test_worker_forgets_removed_sources_on_its_thread_and_stops() -> None:
    annotator = FakeAnnotator()
    worker = FrameWorker(annotator)
    worker.add_source("gone", lambda processed: None)
    worker.start()
    worker.remove_source("gone")
    deadline = time.monotonic() + 5
    while not annotator.forgotten and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.close(timeout=5)
    assert annotator.forgotten == ["gone"]
    assert worker.source_count == 0 and not worker.alive
    # Frames for an unknown source are ignored, not queued.
    worker.submit("gone", _video_frame(1), 1.0)


# --- the server over HTTP ------------------------------------------------------------------------


def test_offers_that_cannot_be_used_get_http_400() -> None:
    async def scenario() -> list[tuple[int, dict]]:
        app = create_app(loopback_settings(), FakeAnnotator())
        replies = []
        async with serving(app) as base, aiohttp.ClientSession() as http:
            bodies = [
                b"{nope",
                json.dumps(
                    {
                        "sdp": "v=0\r\nm=video 9 RTP/AVP 0\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\n"
                        "a=fingerprint:sha-256 00\r\nthis is not sdp",
                        "type": "offer",
                    }
                ).encode(),
            ]
            for body in bodies:
                async with http.post(f"{base}/offer", data=body) as response:
                    replies.append((response.status, await response.json()))
            assert app[STATE_KEY].peers == {}
        return replies

    replies = run(scenario())
    assert [status for status, _ in replies] == [400, 400]
    assert "not JSON" in replies[0][1]["error"]
    assert replies[1][1]["error"].startswith("offer could not be used")
    assert all("\n" not in body["error"] for _, body in replies)


def test_token_is_required_when_set() -> None:
    async def scenario() -> tuple[int, int, int, int]:
        app = create_app(loopback_settings(token="s3cret"), FakeAnnotator())
        async with serving(app) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/") as page:
                page_status = page.status
            async with http.post(f"{base}/offer", data=b"{}") as refused:
                refused_status = refused.status
            async with http.get(f"{base}/status?token=wrong") as wrong:
                wrong_status = wrong.status
            async with http.post(
                f"{base}/offer", data=b"{}", headers={"Authorization": "Bearer s3cret"}
            ) as accepted:
                accepted_status = accepted.status  # past the token: now the offer itself is judged
        return page_status, refused_status, wrong_status, accepted_status

    assert run(scenario()) == (200, 401, 401, 400)


def test_page_and_its_files_are_served() -> None:
    async def scenario() -> tuple[str, str, str]:
        app = create_app(loopback_settings(), FakeAnnotator())
        async with serving(app) as base, aiohttp.ClientSession() as http:
            texts = []
            for path in ("/", "/static/app.js", "/static/style.css"):
                async with http.get(base + path) as response:
                    assert response.status == 200
                    texts.append(await response.text())
        return tuple(texts)

    page, script, style = run(scenario())
    assert 'id="returned"' in page and "/static/app.js" in page
    assert 'createDataChannel("verdicts")' in script and '"/offer"' in script
    assert ".badge.FAKE" in style


def test_scan_uploads_are_judged_limited_and_explained() -> None:
    scanner = FakeScanner()

    async def scenario() -> list[tuple[int, dict]]:
        app = create_app(loopback_settings(max_upload_bytes=1000), FakeAnnotator(), scanner)
        replies = []
        async with serving(app) as base, aiohttp.ClientSession() as http:
            for name, data in [
                ("clip.mp4", b"MEDIA" + bytes(100)),
                ("notes.txt", b"hello"),
                ("big.mp4", b"MEDIA" + bytes(5000)),
                ("empty.mp4", b""),
            ]:
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name)
                async with http.post(f"{base}/scan?job=j1", data=form) as response:
                    replies.append((response.status, await response.json()))
            async with http.post(f"{base}/scan", data=b"raw") as response:
                replies.append((response.status, await response.json()))
        return replies

    replies = run(scenario())
    assert [status for status, _ in replies] == [200, 400, 413, 400, 400]
    ok = replies[0][1]
    assert ok["report"]["verdict"] == "UNCERTAIN" and ok["annotated"].startswith("data:image/jpeg;base64,")
    assert replies[1][1]["error"] == "notes.txt is not an image or video file"
    assert "limit" in replies[2][1]["error"]
    assert "empty" in replies[3][1]["error"] and "multipart" in replies[4][1]["error"]
    assert all("\n" not in body.get("error", "") for _, body in replies)
    # Uploads live in a temporary folder that is gone once the answer is sent.
    assert scanner.paths and not any(path.exists() for path in scanner.paths)


# --- calls with aiortc peers on loopback ---------------------------------------------------------


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_a_call_returns_annotated_video_and_verdicts_then_cleans_up() -> None:
    annotator = FakeAnnotator()
    threads_before = _threads()
    # Calls of earlier tests (the browser's) may still be winding down: only this call's objects count.
    gc.collect()
    before = {id(item) for item in gc.get_objects() if isinstance(item, PeerSession | RTCPeerConnection)}

    async def scenario() -> dict:
        app = create_app(loopback_settings(), annotator)
        async with serving(app) as base, aiohttp.ClientSession() as http:
            state = app[STATE_KEY]
            track = StampedTrack(plain_frame)
            call = await start_call(http, base, track)
            # Only loopback candidates on both sides.
            for description in (call.connection.localDescription, call.connection.remoteDescription):
                hosts = {
                    line.split()[4] for line in description.sdp.splitlines() if line.startswith("a=candidate")
                }
                assert hosts == {"127.0.0.1"}
            returned = await asyncio.wait_for(call.returned, 10)
            frame = None
            for _ in range(60):
                frame = (await asyncio.wait_for(returned.recv(), 10)).to_ndarray(format="bgr24")
                if read_stamp(frame) is not None:
                    break
            await wait_until(lambda: len(call.messages) >= 5, 10, "verdict messages")
            peers_during = len(state.peers)
            await call.close()
            await wait_until(lambda: not state.peers, 10, "the server to drop the peer")
            return {
                "frame": frame,
                "stamp": read_stamp(frame),
                "message": call.messages[-1],
                "peers_during": peers_during,
                "worker_sources": state.worker.source_count,
            }

    result = run(scenario())
    frame = result["frame"]
    x1, y1, _, _ = (int(value) for value in FAKE_BOX)
    edge = frame[y1 - 2 : y1 + 3, x1 + 20 : x1 + 60].reshape(-1, 3).mean(axis=0)
    assert edge[0] > 180 and edge[1] < 90 and edge[2] > 180, f"no magenta overlay edge: {edge}"
    assert result["stamp"] is not None
    message = result["message"]
    assert message["type"] == "verdicts" and (message["width"], message["height"]) == (640, 480)
    assert message["faces"] == [{"id": 7, "box": list(FAKE_BOX), "state": "UNCERTAIN", "p_smoothed": 0.5}]
    assert result["peers_during"] == 1 and result["worker_sources"] == 0
    assert len(annotator.forgotten) == 1
    assert annotator.threads == {"webrtc-engine"}
    time.sleep(0.5)
    leaked = {name for name in _threads() - threads_before if not name.startswith("asyncio_")}
    assert not leaked, f"threads left running: {leaked}"
    # Nothing holds on to the call's objects (a reference cycle through a callback would).
    gc.collect()
    alive = [
        type(item).__name__
        for item in gc.get_objects()
        if isinstance(item, PeerSession | RTCPeerConnection) and id(item) not in before
    ]
    assert not alive, f"still alive after the call: {alive}"


def test_peers_share_batches_and_the_limit_refuses_the_next() -> None:
    annotator = FakeAnnotator(delay_s=0.03)

    async def scenario() -> tuple[str, int]:
        app = create_app(loopback_settings(max_peers=2), annotator)
        async with serving(app) as base, aiohttp.ClientSession() as http:
            calls = [await start_call(http, base, StampedTrack(plain_frame)) for _ in range(2)]
            with pytest.raises(StreamDetectorError) as refused:
                await start_call(http, base, StampedTrack(plain_frame))
            await wait_until(
                lambda: all(len(call.messages) >= 10 for call in calls), 15, "messages on both calls"
            )
            largest = max(len(batch) for batch in annotator.batches)
            for call in calls:
                await call.close()
        return str(refused.value), largest

    refusal, largest = run(scenario())
    assert "503" in refusal and "limit" in refusal
    assert largest == 2, "two peers' frames should share one annotate (classifier) call"


def test_a_peer_that_stops_sending_is_closed() -> None:
    class StallingTrack(StampedTrack):
        async def recv(self):
            if self._index >= 10:
                await asyncio.sleep(3600)
            return await super().recv()

    annotator = FakeAnnotator()

    async def scenario() -> tuple[int, int]:
        app = create_app(loopback_settings(idle_timeout_s=1.0), annotator)
        async with serving(app) as base, aiohttp.ClientSession() as http:
            state = app[STATE_KEY]
            call = await start_call(http, base, StallingTrack(plain_frame))
            await wait_until(lambda: len(call.messages) >= 3, 10, "first messages")
            peers_while_sending = len(state.peers)
            await wait_until(lambda: not state.peers, 10, "the idle peer to be closed")
            await call.close()
            return peers_while_sending, state.worker.source_count

    assert run(scenario()) == (1, 0)
    assert len(annotator.forgotten) == 1


# --- the real engine -----------------------------------------------------------------------------

STATE_COLOURS_BGR = np.array([(0, 200, 0), (0, 0, 255), (0, 190, 255)], np.int16)  # overlay.STATE_COLOURS


def overlay_pixels(image: np.ndarray, box: Sequence[float], margin: float = 0.3) -> int:
    """Pixels in (and around) ``box`` that have one of the overlay's state colours."""
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    height, width = image.shape[:2]
    region = image[
        max(int(y1 - pad_y), 0) : min(int(y2 + pad_y), height),
        max(int(x1 - pad_x), 0) : min(int(x2 + pad_x), width),
    ].astype(np.int16)
    distances = np.abs(region[:, :, None, :] - STATE_COLOURS_BGR[None, None]).sum(axis=3).min(axis=2)
    return int((distances < 60).sum())


@pytest.mark.slow
def test_a_call_through_the_real_engine_returns_the_face_verdict(astronaut_bgr: np.ndarray) -> None:
    from stream_detector.pipeline.engine import EngineSettings, build_engine
    from stream_detector.webrtc.annotator import EngineAnnotator
    from tools.media import compose, head_patch, moving_face_path

    patch = head_patch(astronaut_bgr)
    placements = moving_face_path(90, 640, 480)
    frames = [compose(patch, [placement], 640, 480) for placement in placements]
    annotator = EngineAnnotator(build_engine(EngineSettings()))

    async def scenario() -> tuple[list[dict], list[tuple[np.ndarray, int]]]:
        app = create_app(loopback_settings(), annotator)
        async with serving(app) as base, aiohttp.ClientSession() as http:
            track = StampedTrack(lambda index: frames[index % len(frames)])
            call = await start_call(http, base, track)
            returned = await asyncio.wait_for(call.returned, 10)
            await wait_until(
                lambda: sum(bool(message["faces"]) for message in call.messages) >= 10, 60, "face verdicts"
            )
            samples = []
            while len(samples) < 5:
                image = (await asyncio.wait_for(returned.recv(), 10)).to_ndarray(format="bgr24")
                stamp = read_stamp(image)
                if stamp is not None:
                    samples.append((image, stamp))
            await call.close()
            return call.messages, samples

    try:
        messages, samples = run(scenario())
    finally:
        annotator.close()
    with_faces = [message for message in messages if message["faces"]]
    face = with_faces[-1]["faces"][0]
    assert face["state"] in ("REAL", "FAKE", "UNCERTAIN") and 0.0 <= face["p_smoothed"] <= 1.0
    x1, y1, x2, y2 = face["box"]
    assert 60 < x2 - x1 < 400 and 60 < y2 - y1 < 400, f"implausible face box {face['box']}"
    # The overlay is drawn around the face in the returned frames (and was not in the sent ones).
    for image, stamp in samples:
        expected = placements[stamp % len(frames)].face_box()
        sent = frames[stamp % len(frames)]
        assert overlay_pixels(image, expected) - overlay_pixels(sent, expected) > 150, (
            f"no overlay at {stamp}"
        )


@pytest.mark.slow
def test_file_scanner_reports_like_the_scan_command(astronaut_bgr: np.ndarray, tmp_path: Path) -> None:
    from stream_detector.pipeline.engine import EngineSettings
    from stream_detector.webrtc.scanning import FileScanner
    from stream_detector.webrtc.server import ScanCancelled
    from tools.media import moving_face_frames, write_video

    frames, _ = moving_face_frames(astronaut_bgr, count=20)
    video = write_video(tmp_path / "upload.avi", frames)
    image = tmp_path / "upload.jpg"
    cv2.imwrite(str(image), astronaut_bgr)
    not_media = tmp_path / "upload.mp4"
    not_media.write_bytes(b"plain text, not a video")
    scanner = FileScanner(EngineSettings())
    fractions_seen: list[float] = []
    try:
        video_result = scanner.scan(video, "holiday.avi", fractions_seen.append)
        image_result = scanner.scan(image, "portrait.jpg", lambda fraction: None)
        with pytest.raises(StreamDetectorError) as not_media_error:
            scanner.scan(not_media, "notes.mp4", lambda fraction: None)

        def cancel(fraction: float) -> None:
            raise ScanCancelled

        with pytest.raises(ScanCancelled):
            scanner.scan(video, "holiday.avi", cancel)
    finally:
        scanner.close()

    report = video_result.report
    assert report["path"] == "holiday.avi" and report["kind"] == "video" and report["frames"] == 20
    assert report["verdict"] in ("REAL", "FAKE", "UNCERTAIN") and len(report["tracks"]) >= 1
    assert fractions_seen == sorted(fractions_seen) and fractions_seen[-1] == 1.0 and len(fractions_seen) > 10
    picture = cv2.imdecode(np.frombuffer(video_result.annotated_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == frames[0].shape
    assert overlay_pixels(picture, (0, 0, 640, 360), margin=0) > 150, "the annotated frame has no overlay"
    assert image_result.report["kind"] == "image" and image_result.report["path"] == "portrait.jpg"
    assert image_result.report["verdict"] in ("REAL", "FAKE", "UNCERTAIN")
    assert image_result.annotated_jpeg is not None
    message = str(not_media_error.value)
    assert "notes.mp4" in message and str(tmp_path) not in message and "\n" not in message


@pytest.mark.slow
def test_serve_command_answers_on_loopback_and_stops_cleanly(tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repository = Path(__file__).resolve().parents[2]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "stream_detector.cli", "serve", "--port", str(port), "--max-peers", "1"],
            cwd=repository,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    async def scenario() -> tuple[dict, set[str], int]:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, log_path.read_text()[-2000:]
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/status") as response:
                        if response.status == 200:
                            status = await response.json()
                            break
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.5)
            with restrict_host_addresses(LOOPBACK):
                call = await start_call(http, base, StampedTrack(plain_frame))
                hosts = {
                    line.split()[4]
                    for line in call.connection.remoteDescription.sdp.splitlines()
                    if line.startswith("a=candidate")
                }
                await wait_until(lambda: len(call.messages) >= 5, 30, "verdict messages from serve")
                await call.close()
        return status, hosts, len(call.messages)

    try:
        status, hosts, messages = run(scenario())
        server.send_signal(signal.SIGINT)
        exit_code = server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    output = log_path.read_text()
    assert status["max_peers"] == 1 and status["worker_alive"]
    assert hosts == {"127.0.0.1"}, f"serve offered media on {hosts}"
    assert messages >= 5
    assert exit_code == 0, output[-2000:]
    assert f"open http://127.0.0.1:{port}/" in output


def test_serve_arguments_are_checked_before_anything_loads(capsys: pytest.CaptureFixture[str]) -> None:
    from stream_detector.cli import main

    assert main(["serve", "--port", "70000"]) == 2
    assert main(["serve", "--max-peers", "0"]) == 2
    assert main(["serve", "--keyfile", "key.pem"]) == 2
    assert main(["serve", "--classify-budget", "-1"]) == 2
    assert main(["serve", "--tiles-every-ms", "-5"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "stream-detector serve: error: --port must be 0..65535, not 70000",
        "stream-detector serve: error: --max-peers must be at least 1, not 0",
        "stream-detector serve: error: --keyfile needs --certfile",
        "stream-detector serve: error: --classify-budget must be 0 (no limit) to 1000, not -1.0",
        "stream-detector serve: error: --tiles-every-ms must be 0 (every frame) to 60000, not -5.0",
    ]


def test_send_only_offers_get_verdicts_and_receive_only_offers_are_refused() -> None:
    from aiortc import RTCConfiguration, RTCSessionDescription

    async def offer(
        http: aiohttp.ClientSession, base: str, connection: RTCPeerConnection
    ) -> tuple[int, dict]:
        await connection.setLocalDescription(await connection.createOffer())
        local = connection.localDescription
        async with http.post(f"{base}/offer", json={"sdp": local.sdp, "type": local.type}) as response:
            return response.status, await response.json()

    async def scenario() -> tuple[str, int, tuple[int, dict], int]:
        app = create_app(loopback_settings(), FakeAnnotator())
        async with serving(app) as base, aiohttp.ClientSession() as http:
            sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            sender.addTransceiver(StampedTrack(plain_frame), direction="sendonly")
            channel = sender.createDataChannel("verdicts")
            messages: list[dict] = []
            channel.on("message", lambda message: messages.append(json.loads(message)))
            status, answer = await offer(http, base, sender)
            assert status == 200
            await sender.setRemoteDescription(RTCSessionDescription(**answer))
            await wait_until(lambda: len(messages) >= 5, 10, "verdicts for a send-only call")
            await sender.close()

            receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            receiver.addTransceiver("video", direction="recvonly")
            refused = await offer(http, base, receiver)
            await receiver.close()
            await wait_until(lambda: not app[STATE_KEY].peers, 10, "no peers left")
            direction = next(
                line for line in answer["sdp"].splitlines() if line in ("a=recvonly", "a=sendrecv")
            )
            return direction, len(messages), refused, len(app[STATE_KEY].peers)

    direction, message_count, (status, body), peers = run(scenario())
    assert direction == "a=recvonly" and message_count >= 5
    assert status == 400 and body["error"].startswith("offer does not send video")
    assert peers == 0


def test_the_offer_rate_limit_per_client_address() -> None:
    limiter = RateLimiter(per_minute=6.0, burst=3)
    assert [limiter.take("10.0.0.1", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("10.0.0.1", 100.0) == pytest.approx(10.0)
    assert limiter.take("10.0.0.2", 100.0) == 0.0  # another address has its own bucket
    assert limiter.take("10.0.0.1", 105.0) == pytest.approx(5.0)
    assert limiter.take("10.0.0.1", 110.0) == 0.0


# (method, path, body, status, words in the error): every error of every endpoint is JSON.
HTTP_ERRORS = [
    ("POST", "/offer", b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
    ("POST", "/offer", json.dumps({"sdp": "v=0\r\nm=video\r\n", "type": "offer"}).encode(), 400, "lacks"),
    ("POST", "/offer", b"x" * (2 * 1024 * 1024), 413, "larger than the 1 MB limit"),
    ("GET", "/offer", b"", 405, "method not allowed"),
    ("GET", "/no/such/page", b"", 404, "no such page"),
    ("GET", "/static/missing.js", b"", 404, "no such page"),
]


def test_every_error_is_the_documented_json() -> None:
    async def scenario() -> list[tuple[int, str, object]]:
        app = create_app(loopback_settings(), FakeAnnotator())
        replies = []
        async with serving(app) as base, aiohttp.ClientSession() as http:
            for method, path, body, _, _ in HTTP_ERRORS:
                async with http.request(method, f"{base}{path}", data=body or None) as response:
                    replies.append((response.status, response.content_type, await response.json()))
        return replies

    for (_, path, _, status, words), (got, content_type, body) in zip(
        HTTP_ERRORS, run(scenario()), strict=True
    ):
        assert (got, content_type) == (status, "application/json"), path
        assert set(body) == {"error"} and words in body["error"] and "\n" not in body["error"], body


def test_offers_over_the_rate_limit_get_429_with_retry_after() -> None:
    async def scenario() -> list[tuple[int, str | None, dict]]:
        app = create_app(loopback_settings(offer_burst=2, offers_per_minute=2.0), FakeAnnotator())
        body = json.dumps({"sdp": "v=0\r\nm=video\r\n", "type": "offer"}).encode()
        replies = []
        async with serving(app) as base, aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(f"{base}/offer", data=body) as response:
                    replies.append(
                        (response.status, response.headers.get("Retry-After"), await response.json())
                    )
        return replies

    replies = run(scenario())
    assert [status for status, _, _ in replies] == [400, 400, 429]
    assert replies[2][1] == "30" and "too many offers from 127.0.0.1" in replies[2][2]["error"]


def test_slots_are_freed_at_once_on_close_and_soon_when_ice_never_connects() -> None:
    annotator = FakeAnnotator()

    async def scenario() -> tuple[float, float]:
        app = create_app(loopback_settings(max_peers=1, connect_timeout_s=1.5), annotator)
        async with serving(app) as base, aiohttp.ClientSession() as http:
            state = app[STATE_KEY]
            call = await start_call(http, base, StampedTrack(plain_frame))
            await wait_until(lambda: len(call.messages) >= 3, 10, "first messages")
            closed_at = time.monotonic()
            await call.close()
            await wait_until(lambda: not state.peers, 3, "the closed call's slot to be free")
            freed_after_close = time.monotonic() - closed_at

            # An offer whose sender never answers ICE: it holds the one slot only for connect_timeout_s.
            silent = RTCPeerConnection()
            silent.addTransceiver("video", direction="sendonly")
            await silent.setLocalDescription(await silent.createOffer())
            offer = {"sdp": silent.localDescription.sdp, "type": "offer"}
            async with http.post(f"{base}/offer", json=offer) as response:
                assert response.status == 200
            held_from = time.monotonic()
            async with http.post(f"{base}/offer", json=offer) as response:
                assert response.status == 503  # the slot is held...
            await wait_until(lambda: not state.peers, 6, "the unconnected offer's slot to be free")
            held_for = time.monotonic() - held_from
            await silent.close()
        return freed_after_close, held_for

    freed_after_close, held_for = run(scenario())
    assert freed_after_close < 3.0 and 1.0 < held_for < 6.0


def test_a_stamp_is_read_back_from_a_frame_returned_smaller():
    from stream_detector.webrtc.worker import FrameWorker

    image = np.full((1080, 1920, 3), 90, np.uint8)
    write_stamp(image, 2345)
    # What the worker sends back: scaled, in the encoder's YUV 4:2:0.
    returned = FrameWorker(annotator=None, return_max_width=1280)._returned(image)  # type: ignore[arg-type]
    smaller = returned.to_ndarray(format="bgr24")
    assert read_stamp(smaller) is None
    assert read_stamp(smaller, scale=1280 / 1920) == 2345


def test_the_worker_sends_wide_frames_back_scaled_down_and_small_ones_as_they_are():
    from stream_detector.webrtc.worker import FrameWorker

    worker = FrameWorker(annotator=None, return_max_width=1280)  # type: ignore[arg-type]
    picture = np.zeros((1080, 1920, 3), np.uint8)
    picture[100:200, 100:300] = (0, 0, 255)  # a red box, as the overlay draws
    wide = worker._returned(picture)
    assert (wide.width, wide.height, wide.format.name) == (1280, 720, "yuv420p")
    back = wide.to_ndarray(format="bgr24")
    assert np.abs(back[100:120, 80:180].astype(int) - (0, 0, 255)).max() < 40  # still red, where scaled
    small = np.zeros((480, 640, 3), np.uint8)
    assert (worker._returned(small).width, worker._returned(small).height) == (640, 480)
    odd = worker._returned(np.zeros((481, 641, 3), np.uint8))
    assert (odd.width, odd.height) == (641, 481)
    assert FrameWorker(annotator=None)._returned(picture).width == 1920  # type: ignore[arg-type]
