import contextlib
import gc
import random
import signal
import socket
import threading
import time
import weakref

import numpy as np
import pytest

from stream_detector.daemon.cameras import Backoff, CameraState, ReconnectingCamera, StreamSource
from stream_detector.daemon.config import ReconnectConfig
from stream_detector.errors import SourceError
from stream_detector.pipeline.types import Frame
from tools import rtsp_server
from tools.rtsp_server import free_port
from tools.waiting import wait_until

# Subprocesses, real servers, threads on real clocks or TensorFlow: not the fast lane (make test-fast).
pytestmark = pytest.mark.slow

rtsp_server_factory = rtsp_server.rtsp_server_factory  # the fixture, used by name below

FAST = ReconnectConfig(
    open_timeout_s=1,
    read_timeout_s=1,
    stall_timeout_s=0.6,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    jitter=0.2,
)


def test_backoff_doubles_with_jitter_and_is_capped():
    backoff = Backoff(1.0, 30.0, 2.0, jitter=0.25, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        base = min(30.0, 2.0**attempt)
        assert base * 0.75 <= delay <= min(30.0, base * 1.25)
    assert max(delays) <= 30.0 and delays[-1] >= 22.5
    # Jitter makes cameras that failed together retry apart.
    other = Backoff(1.0, 30.0, 2.0, jitter=0.25, rng=random.Random(8))
    assert [other.next_delay() for _ in range(12)] != delays
    backoff.reset()
    assert backoff.next_delay() <= 1.25
    # A camera dead for weeks: no overflow, still the cap.
    for _ in range(5000):
        assert backoff.next_delay() <= 30.0


class ScriptedSource:
    """Delivers ``frames`` frames at ``interval`` s, then fails (or hangs, ignoring any timeout)."""

    def __init__(self, frames: int, interval: float = 0.01, hang: threading.Event | None = None) -> None:
        self.frames = frames
        self.interval = interval
        self.hang = hang
        self.index = 0
        self.closed = False

    def read(self) -> Frame | None:
        if self.index >= self.frames:
            if self.hang is not None:
                self.hang.wait()
            raise SourceError("camera went away")
        time.sleep(self.interval)
        self.index += 1
        return Frame(np.zeros((8, 8, 3), np.uint8), self.index, time.monotonic() * 1000, "cam")

    def close(self) -> None:
        self.closed = True


class Opener:
    """Plays a script of outcomes: an int (a source with that many frames), or an exception."""

    def __init__(self, script, hang: threading.Event | None = None) -> None:
        self.script = list(script)
        self.calls = 0
        self.hang = hang
        self.sources: list[ScriptedSource] = []

    def __call__(self) -> ScriptedSource:
        outcome = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        source = ScriptedSource(outcome, hang=self.hang)
        self.sources.append(source)
        return source


def test_a_lost_camera_is_reopened_and_the_reconnect_counted():
    opener = Opener([20, SourceError("refused"), SourceError("refused"), 10_000])
    camera = ReconnectingCamera("cam", opener, FAST).start()
    try:
        assert wait_until(lambda: camera.status().reconnects == 1 and camera.status().connected)
        status = camera.status()
        assert (
            status.failed_opens == 2 and status.state == CameraState.CONNECTED and status.last_error is None
        )
        assert opener.sources[0].closed  # the dead connection was released
        assert camera.read(timeout=2) is not None
    finally:
        camera.close()
    assert camera.status().state == CameraState.STOPPED


def test_a_dropped_connection_is_freed_at_once_not_by_a_later_garbage_collection():
    # The capture thread's exception, kept by its reader, must not hold the source (and its decoder
    # buffers) in a reference cycle: a camera reconnecting all day would grow the heap until a full GC.
    opener = Opener([5, 10_000])
    gc.disable()
    try:
        camera = ReconnectingCamera("cam", opener, FAST).start()
        try:
            assert wait_until(lambda: camera.status().reconnects == 1)
            first = weakref.ref(opener.sources[0])
            del opener.sources[0]
            assert wait_until(lambda: first() is None, timeout=3)
        finally:
            camera.close()
    finally:
        gc.enable()


def test_a_camera_that_never_opens_keeps_retrying_with_growing_delays():
    opener = Opener([SourceError("cannot open stream rtsp://x (refused)")])
    camera = ReconnectingCamera("dead", opener, FAST).start()
    try:
        assert wait_until(lambda: opener.calls >= 5)
        status = camera.status()
        assert not status.connected and status.reconnects == 0 and status.frames_captured == 0
        assert "refused" in (status.last_error or "")
        assert camera.take() is None
    finally:
        started = time.monotonic()
        camera.close()
        assert time.monotonic() - started < 2.0  # a backoff sleep does not delay shutdown


def test_the_watchdog_drops_a_connection_whose_read_hangs():
    release = threading.Event()
    opener = Opener([5, 10_000], hang=release)  # the first connection hangs after 5 frames
    camera = ReconnectingCamera("cam", opener, FAST).start()
    try:
        assert wait_until(lambda: camera.status().reconnects == 1 and camera.status().connected)
        assert camera.status().stalls == 1
    finally:
        release.set()
        camera.close()


def test_the_slot_keeps_only_the_newest_frame_and_counts_the_rest():
    opener = Opener([10_000])
    camera = ReconnectingCamera("cam", opener, FAST).start()
    try:
        assert wait_until(lambda: camera.status().frames_captured >= 30)
        frame = camera.take()
        assert frame is not None and camera.take() is None
        status = camera.status()
        # Nobody took the frames: each one replaced the one before.
        assert status.dropped_frames >= status.frames_captured - 2 >= 28
        assert status.capture_fps > 0
    finally:
        camera.close()
    # The counters add up (CameraStatus): every decoded frame was skipped, dropped, taken, or waits.
    final = camera.status()
    waiting = final.frames_decoded - final.frames_skipped - final.dropped_frames - final.frames_taken
    assert waiting in (0, 1) and final.dropped_frames <= final.frames_decoded


def test_a_shared_stop_event_stops_the_camera():
    stop = threading.Event()
    camera = ReconnectingCamera("cam", Opener([10_000]), FAST, stop=stop).start()
    assert wait_until(lambda: camera.status().connected)
    stop.set()
    assert wait_until(lambda: camera.status().state == CameraState.STOPPED, timeout=3)
    assert camera.read(timeout=0.1) is None or camera.read(timeout=0.1) is None


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.connections.append(self.socket.accept()[0])

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.slow
def test_a_silent_camera_times_out_without_holding_up_another_cameras_open():
    silent = SilentServer()
    finished: list[str] = []
    errors: dict[str, str] = {}

    def attempt(name: str, url: str) -> None:
        try:
            StreamSource(url, name, open_timeout_s=3, read_timeout_s=1, secrets=("pw-1234",)).close()
        except SourceError as error:
            errors[name] = str(error)
        finished.append(name)

    try:
        hanging = threading.Thread(
            target=attempt, args=("silent", f"rtsp://u:pw-1234@127.0.0.1:{silent.port}/x")
        )
        hanging.start()
        time.sleep(0.3)  # the silent open is under way
        refused = threading.Thread(
            target=attempt, args=("refused", f"rtsp://u:pw-1234@127.0.0.1:{free_port()}/x")
        )
        refused.start()
        refused.join(10)
        hanging.join(10)
    finally:
        silent.close()
    # With OpenCV's capture the refused open waits for the silent one (one process-wide open lock).
    assert finished == ["refused", "silent"]
    assert (
        "cannot open stream rtsp://u:***@127.0.0.1" in errors["refused"]
        and "refused" in errors["refused"].lower()
    )
    assert "after 3." in errors["silent"] or "after 2.9" in errors["silent"]
    assert all("pw-1234" not in error for error in errors.values())


@pytest.mark.slow
def test_real_stream_refused_then_served(rtsp_server_factory):
    """A real RTSP URL: refused while the server is down, connected once it starts; one reconnect."""
    server = rtsp_server_factory()
    url = server.url("cam")
    server.stop()

    def opener():
        return StreamSource(url, "cam", open_timeout_s=2, read_timeout_s=2, secrets=("pw-1234",))

    policy = ReconnectConfig(
        open_timeout_s=2, read_timeout_s=2, stall_timeout_s=3, backoff_initial_s=0.2, backoff_max_s=1
    )
    camera = ReconnectingCamera("cam", opener, policy).start()
    try:
        assert wait_until(lambda: camera.status().failed_opens >= 2)
        server.start()
        assert wait_until(lambda: camera.status().connected, timeout=20)
        frame = camera.read(timeout=5)
        assert frame is not None and frame.image.shape == (360, 640, 3)
        server.kill()
        assert wait_until(lambda: not camera.status().connected, timeout=10)
        server.start()
        assert wait_until(lambda: camera.status().reconnects == 1 and camera.status().connected, timeout=25)

        # A server that freezes (SIGSTOP) keeps the TCP connection open and sends nothing: the stall
        # watchdog or the read timeout drops it, and the camera is back once the server thaws.
        server.process.send_signal(signal.SIGSTOP)
        try:
            assert wait_until(lambda: not camera.status().connected, timeout=10)
            assert camera.status().last_error
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert wait_until(lambda: camera.status().reconnects == 2 and camera.status().connected, timeout=25)
    finally:
        camera.close()
