"""A camera that keeps itself connected: open/read timeouts, a stall watchdog, backoff with jitter.

``ReconnectingCamera(name, opener, policy)`` wraps whatever ``opener()`` returns (``sources.open_source``
or a ``CaptureSource`` with timeouts, in the daemon). A supervisor thread per camera:

1. opens the source (each attempt bounded by the source's own open timeout);
2. runs it under ``sources.LatestFrameReader`` (the capture thread: newest frame only) and moves each
   frame to this camera's one-frame slot, which the detection loop empties at its own pace;
3. when the source fails, ends, or delivers nothing for ``stall_timeout_s`` (the watchdog: it does not
   trust the source's read timeout to fire), it drops the connection and reopens after a backoff delay:
   ``initial * multiplier**attempt``, capped at ``backoff_max_s``, with +/- ``jitter`` so that many
   cameras behind one flapping switch do not reconnect in lockstep. The delay resets once a connection
   has delivered frames for ``STABLE_CONNECTION_S``.

Nothing here raises into the caller: a camera that fails is a state (see ``status()``), never an
exception that could stop the other cameras or the daemon.

``StreamSource`` is the daemon's network source, on PyAV rather than OpenCV: OpenCV's FFmpeg backend
opens captures under one process-wide lock, so a single camera that accepts and then says nothing holds
every other camera's (re)connection for its whole open timeout (measured: a refused URL took the 4 s of a
silent one opened just before it). PyAV opens and reads without that lock and without the GIL.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream_detector.daemon.config import ReconnectConfig, mask
from stream_detector.errors import SourceError
from stream_detector.pipeline.sources import MAX_FRAME_PIXELS, LatestFrameReader, forget_traceback
from stream_detector.pipeline.types import Frame, FrameSource

log = logging.getLogger(__name__)

# A connection that delivered frames this long counts as healthy: the next failure starts the backoff over.
STABLE_CONNECTION_S = 10.0
# How long ``close`` waits for a capture thread blocked in a network read (its read timeout ends it).
CAPTURE_JOIN_S = 1.0


class StreamSource:
    """A network stream (RTSP, RTMP, HTTP) decoded with PyAV: bounded open and read, newest frames.

    ``max_fps`` (> 0) hands out at most that many frames per second: every frame is still decoded
    (H.264 needs them all) but only the ones handed out are converted to BGR arrays, which is most of
    the per-frame cost; the others are counted in ``skipped``. Errors are ``SourceError`` lines with
    the URL's password masked (FFmpeg's messages quote the URL whole).
    """

    def __init__(
        self,
        url: str,
        source_id: str,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 5.0,
        transport: str = "tcp",
        max_fps: float = 0.0,
        secrets: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import av

        self.source_id = source_id
        self.max_fps = max_fps
        self.skipped = 0
        self._secrets = secrets
        self._clock = clock
        self._index = 0
        self._next_due = 0.0
        options = {
            # Probing a live stream for 5 s (FFmpeg's default) only delays the first frame.
            "analyzeduration": "1000000",
            "probesize": "2000000",
            "fflags": "nobuffer",
        }
        if url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = transport
        started = clock()
        try:
            self._container = av.open(url, options=options, timeout=(open_timeout_s, read_timeout_s))
        except Exception as error:
            waited = clock() - started
            raise SourceError(
                f"cannot open stream {mask(url, secrets)}: {self._describe(error)} (after {waited:.1f} s)"
            ) from None
        try:
            self._stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise SourceError(f"no video in stream {mask(url, secrets)}") from None
        # Slice threads only: frame threads would hold back several frames (latency) for no CPU gain.
        self._stream.thread_type = "SLICE"
        self._url = url
        self._frames = self._container.decode(self._stream)

    def _describe(self, error: BaseException) -> str:
        text = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return mask(str(text), self._secrets)

    def read(self) -> Frame | None:
        while True:
            try:
                decoded = next(self._frames)
            except StopIteration:
                raise SourceError(f"stream ended: {mask(self._url, self._secrets)}") from None
            except Exception as error:
                raise SourceError(
                    f"stream {mask(self._url, self._secrets)} failed: {self._describe(error)}"
                ) from None
            now = self._clock()
            if self.max_fps > 0:
                if now < self._next_due:
                    self.skipped += 1
                    continue
                period = 1.0 / self.max_fps
                # Keep the cadence, but never bank credit across a stall.
                self._next_due = max(self._next_due + period, now - period)
            if decoded.width * decoded.height > MAX_FRAME_PIXELS:
                raise SourceError(
                    f"frame too large: {decoded.width}x{decoded.height}: {mask(self._url, self._secrets)}"
                )
            image = decoded.to_ndarray(format="bgr24")
            frame = Frame(np.ascontiguousarray(image), self._index, now * 1000.0, self.source_id)
            self._index += 1
            return frame

    def close(self) -> None:
        # Closing a broken connection may fail; there is nothing left to release then.
        with contextlib.suppress(Exception):
            self._container.close()


class CameraState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class Backoff:
    """Capped exponential delays with symmetric jitter; pure apart from the random generator given."""

    def __init__(
        self,
        initial_s: float,
        maximum_s: float,
        multiplier: float = 2.0,
        jitter: float = 0.25,
        rng: random.Random | None = None,
    ) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        # The exponent is capped so a camera dead for weeks cannot overflow the float.
        base = min(self.maximum_s, self.initial_s * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        spread = base * self.jitter * self._rng.uniform(-1.0, 1.0)
        return min(self.maximum_s, max(0.0, base + spread))

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class CameraStatus:
    """Frame counters add up: ``frames_decoded = frames_skipped + frames_captured + (replaced in the
    capture slot, counted in dropped_frames)``, and ``frames_captured = frames_taken + (replaced in
    the camera slot, also in dropped_frames) + at most one waiting``. ``dropped_frames`` is every frame
    decoded and converted that a newer one replaced before detection took it; ``frames_skipped`` those
    not even converted (beyond the camera's rate cap)."""

    name: str
    state: CameraState
    connected: bool
    frames_captured: int
    frames_taken: int
    dropped_frames: int
    reconnects: int  # successful re-opens after a lost or failed connection
    failed_opens: int
    stalls: int  # connections dropped by the watchdog
    frames_decoded: int
    frames_skipped: int
    last_frame_age_s: float | None
    capture_fps: float
    last_error: str | None
    next_attempt_in_s: float | None


class ReconnectingCamera:
    """One camera's supervisor thread and newest-frame slot (see the module docstring)."""

    def __init__(
        self,
        name: str,
        opener: Callable[[], FrameSource],
        policy: ReconnectConfig,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self._opener = opener
        self._stop = stop if stop is not None else threading.Event()
        self._closed = threading.Event()
        self._clock = clock
        self._backoff = Backoff(
            policy.backoff_initial_s, policy.backoff_max_s, policy.backoff_multiplier, policy.jitter, rng
        )
        self._condition = threading.Condition()
        self._slot: Frame | None = None
        self._state = CameraState.CONNECTING
        self._ever_connected = False
        self._frames_captured = 0
        self._frames_taken = 0
        self._dropped = 0  # replaced in either slot, over all connections that ended
        self._slot_dropped = 0  # the part of _dropped replaced in the camera's own slot
        self._skipped = 0  # thinned out by the source's rate cap, over all connections that ended
        self._reconnects = 0
        self._failed_opens = 0
        self._stalls = 0
        self._last_frame_at: float | None = None
        self._last_error: str | None = None
        self._next_attempt_at: float | None = None
        self._fps_window: list[float] = []
        self._live: tuple[LatestFrameReader, FrameSource] | None = None  # the connection being pumped
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    def start(self) -> ReconnectingCamera:
        self._thread.start()
        return self

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self._closed.is_set()

    # The detection loop's side.

    def take(self) -> Frame | None:
        """The newest frame not taken yet, without waiting; None if there is none."""
        with self._condition:
            frame, self._slot = self._slot, None
            if frame is not None:
                self._frames_taken += 1
            return frame

    def read(self, timeout: float | None = None) -> Frame | None:
        """FrameSource-style: wait (up to ``timeout`` s) for the newest frame; None when stopped or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._slot is None:
                if self.stopping:
                    return None
                remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)
        return self.take()

    def status(self) -> CameraStatus:
        now = self._clock()
        with self._condition:
            window = [t for t in self._fps_window if now - t <= 5.0]
            fps = (
                (len(window) - 1) / (window[-1] - window[0])
                if len(window) >= 2 and window[-1] > window[0]
                else 0.0
            )
            live_dropped, live_skipped = self._live_counts()
            dropped = self._dropped + live_dropped
            skipped = self._skipped + live_skipped
            return CameraStatus(
                name=self.name,
                state=self._state,
                connected=self._state == CameraState.CONNECTED,
                frames_captured=self._frames_captured,
                frames_taken=self._frames_taken,
                dropped_frames=dropped,
                reconnects=self._reconnects,
                failed_opens=self._failed_opens,
                stalls=self._stalls,
                frames_decoded=self._frames_captured + skipped + (dropped - self._slot_dropped),
                frames_skipped=skipped,
                last_frame_age_s=None if self._last_frame_at is None else max(0.0, now - self._last_frame_at),
                capture_fps=fps,
                last_error=self._last_error,
                next_attempt_in_s=(
                    None if self._next_attempt_at is None else max(0.0, self._next_attempt_at - now)
                ),
            )

    def _live_counts(self) -> tuple[int, int]:
        """The live connection's frames replaced in its capture slot, and skipped by its rate cap."""
        if self._live is None:
            return 0, 0
        reader, source = self._live
        return reader.dropped, int(getattr(source, "skipped", 0))

    def close(self, timeout: float = 3.0) -> None:
        self._closed.set()
        with self._condition:
            self._condition.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera=%s supervisor did not stop within %.1f s", self.name, timeout)

    # The supervisor thread.

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        with self._condition:
            self._state = state
            if error is not None:
                self._last_error = error

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stopped."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._closed.wait(min(remaining, 0.25))
        return True

    def _run(self) -> None:
        try:
            while not self.stopping:
                self._set_state(CameraState.CONNECTING)
                source = self._open()
                if source is None:
                    if self.stopping:
                        break
                    self._back_off()
                    continue
                lost_after = self._pump(source)
                if self.stopping:
                    break
                if lost_after >= STABLE_CONNECTION_S:
                    self._backoff.reset()
                self._back_off()
        except Exception:
            # A bug here must not take the daemon down; the camera shows as stopped with the reason.
            log.exception("camera=%s supervisor failed", self.name)
            self._set_state(CameraState.STOPPED, "internal error (see log)")
            return
        self._set_state(CameraState.STOPPED)

    def _back_off(self) -> None:
        delay = self._backoff.next_delay()
        with self._condition:
            self._state = CameraState.BACKOFF
            self._next_attempt_at = self._clock() + delay
        # Every attempt of a camera dead all night is not worth a line; the first ones and every tenth are.
        attempt = self._backoff.attempt
        level = logging.INFO if attempt <= 3 or attempt % 10 == 0 else logging.DEBUG
        log.log(level, "camera=%s reconnect_in_s=%.2f attempt=%d", self.name, delay, attempt)
        self._wait(delay)
        with self._condition:
            self._next_attempt_at = None

    def _open(self) -> FrameSource | None:
        try:
            source = self._opener()
        except Exception as error:  # SourceError mostly; anything else is reported the same way
            problem = str(error) or type(error).__name__
            forget_traceback(error)
            with self._condition:
                self._failed_opens += 1
                self._last_error = problem
                failures = self._failed_opens
            # The first failure and then every tenth: a camera dead all night must not fill the disk.
            if failures == 1 or failures % 10 == 0:
                log.warning("camera=%s open failed failures=%d problem=%s", self.name, failures, problem)
            return None
        if self.stopping:
            source.close()
            return None
        return source

    def _pump(self, source: FrameSource) -> float:
        """Move frames from a fresh connection to the slot until it fails or stalls; seconds it lasted."""
        reader = LatestFrameReader(source, name=f"capture-{self.name}", join_timeout_s=CAPTURE_JOIN_S)
        with self._condition:
            self._live = (reader, source)
        opened_at = time.monotonic()
        first_frame = True
        last_frame_at = opened_at
        problem = "stopped"
        try:
            while not self.stopping:
                # The watchdog: the wait is bounded here, whatever the source's own read timeout does.
                remaining = self.policy.stall_timeout_s - (time.monotonic() - last_frame_at)
                if remaining <= 0:
                    with self._condition:
                        self._stalls += 1
                    problem = f"stalled: no frame for {self.policy.stall_timeout_s:g} s"
                    break
                try:
                    frame = reader.read(timeout=min(remaining, 0.25))
                except Exception as error:
                    problem = str(error) or type(error).__name__
                    forget_traceback(error)
                    break
                if frame is None:
                    if reader.ended:
                        problem = "stream ended"
                        break
                    continue
                last_frame_at = time.monotonic()
                if first_frame:
                    first_frame = False
                    self._on_connected()
                self._store(frame)
        finally:
            with self._condition:
                live_dropped, live_skipped = self._live_counts()
                self._dropped += live_dropped
                self._skipped += live_skipped
                self._live = None
            # close() joins briefly; a capture thread stuck in a read is left to its read timeout.
            reader.close()
        lasted = time.monotonic() - opened_at
        if not self.stopping:
            with self._condition:
                self._state = CameraState.BACKOFF
                self._last_error = problem
            log.warning("camera=%s disconnected after_s=%.1f problem=%s", self.name, lasted, problem)
        return lasted if not first_frame else 0.0

    def _on_connected(self) -> None:
        with self._condition:
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._state = CameraState.CONNECTED
            self._last_error = None
            reconnects = self._reconnects
        log.info("camera=%s connected reconnects=%d", self.name, reconnects)

    def _store(self, frame: Frame) -> None:
        now = self._clock()
        with self._condition:
            if self._slot is not None:
                self._dropped += 1
                self._slot_dropped += 1
            self._slot = frame
            self._frames_captured += 1
            self._last_frame_at = now
            self._fps_window.append(now)
            if len(self._fps_window) > 256:
                del self._fps_window[:128]
            self._condition.notify_all()
