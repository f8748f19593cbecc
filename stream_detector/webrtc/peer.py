"""One browser (or other client) call: its RTCPeerConnection, returned track, verdict channel, cleanup.

The incoming video track is read by a task that only puts each decoded frame in the worker's slot;
the worker hands the annotated frame back through ``deliver`` (on its thread), and ``ReturnedTrack``
gives aiortc's sender the newest one. Verdict messages go out on the client's DataChannel.
A session closes itself when its connection fails or closes, when it never connects, or when no
frame arrives for a while; closing is idempotent and leaves nothing behind in the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import av
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from stream_detector.pipeline.meters import RateMeter, monotonic_ms
from stream_detector.webrtc.call import CallSummary
from stream_detector.webrtc.signalling import VERDICT_CHANNEL_LABEL, parse_control, verdict_message
from stream_detector.webrtc.worker import FrameWorker, Processed

log = logging.getLogger(__name__)

# A DataChannel whose reader lags (or a congested link) must not buffer verdicts without bound;
# past this many bytes queued, messages are skipped until the queue drains.
MAX_CHANNEL_BUFFER_BYTES = 256 * 1024


class ReturnedTrack(MediaStreamTrack):
    """The annotated video sent back: ``recv`` waits for, then returns, the newest annotated frame."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._newest: av.VideoFrame | None = None
        self._arrived = asyncio.Event()

    def put(self, frame: av.VideoFrame) -> None:
        self._newest = frame
        self._arrived.set()

    async def recv(self) -> av.VideoFrame:
        while self._newest is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._arrived.clear()
            await self._arrived.wait()
        frame, self._newest = self._newest, None
        return frame

    def stop(self) -> None:
        super().stop()
        # Wakes a pending recv so the sender notices the end.
        self._arrived.set()


class PeerSession:
    """A call from one client, from its offer to its cleanup."""

    def __init__(
        self,
        peer_id: str,
        worker: FrameWorker,
        *,
        on_closed: Callable[[PeerSession], None],
        connect_timeout_s: float = 8.0,
        idle_timeout_s: float = 10.0,
    ) -> None:
        self.peer_id = peer_id
        self.source_id = f"webrtc-{peer_id}"
        self.connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.returned = ReturnedTrack()
        self.channel: RTCDataChannel | None = None
        self.frames_received = 0
        self.frames_returned = 0
        self.messages_sent = 0
        # What the page says it sends (a control message on the channel), and the call's verdict.
        self.source_kind = "camera"
        self.call = CallSummary()
        self._worker = worker
        self._on_closed = on_closed
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task] = set()
        self._closing: asyncio.Task | None = None
        self._last_frame_s = time.monotonic()
        self._rate = RateMeter()
        self._has_video = False
        worker.add_source(self.source_id, self._deliver)

        connection = self.connection
        connection.on("track", self._on_track)
        connection.on("datachannel", self._on_datachannel)
        connection.on("connectionstatechange", self._on_state)

    @property
    def has_video(self) -> bool:
        return self._has_video

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def _spawn(self, coroutine, name: str) -> None:
        task = self._loop.create_task(coroutine, name=f"{name}-{self.peer_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and not self._has_video:
            self._has_video = True
            self.connection.addTrack(self.returned)
            self._spawn(self._pump(track), "pump")
        else:
            # An unread remote track queues every frame it decodes; drain what we do not judge.
            self._spawn(self._drain(track), "drain")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == VERDICT_CHANNEL_LABEL or self.channel is None:
            self.channel = channel
            # A browser's pc.close() closes the channel at once; ICE would notice only much later.
            channel.on("close", self._on_channel_closed)
            channel.on("message", self._on_control)

    def _on_control(self, message: object) -> None:
        kind = parse_control(message) if isinstance(message, str) else None
        if kind is not None and kind != self.source_kind:
            log.info("peer %s: source %s", self.peer_id, kind)
            self.source_kind = kind

    def _on_channel_closed(self) -> None:
        if not self.closed:
            log.info("peer %s: the other side closed the call", self.peer_id)
            self.close()

    async def _on_state(self) -> None:
        state = self.connection.connectionState
        log.info("peer %s: connection %s", self.peer_id, state)
        if state in ("failed", "closed"):
            self.close()

    def start_watchdog(self) -> None:
        self._spawn(self._watchdog(), "watchdog")

    async def _watchdog(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            connected = self.connection.connectionState == "connected"
            if not connected and self.frames_received == 0 and now - started > self._connect_timeout_s:
                log.info("peer %s: did not connect within %.0f s", self.peer_id, self._connect_timeout_s)
                self.close()
                return
            if self.frames_received and now - self._last_frame_s > self._idle_timeout_s:
                log.info("peer %s: no video for %.0f s, closing", self.peer_id, self._idle_timeout_s)
                self.close()
                return

    async def _pump(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            self.frames_received += 1
            self._last_frame_s = time.monotonic()
            self._worker.submit(self.source_id, frame, monotonic_ms())
        log.info("peer %s: video track ended", self.peer_id)
        # The sender ended its track (RTCP BYE) or the transport went: the slot is free now.
        self.close()

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    def _deliver(self, processed: Processed) -> None:
        # Worker thread: hand over to the event loop, which owns the track and the channel.
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server is gone
            self._loop.call_soon_threadsafe(self._returned, processed)

    def _returned(self, processed: Processed) -> None:
        if self.closed:
            return
        self.returned.put(processed.video_frame)
        self.frames_returned += 1
        fps = self._rate.tick(processed.done_ms)
        self.call.update(processed.verdicts, processed.received_ms)
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_CHANNEL_BUFFER_BYTES:
            return
        channel.send(
            verdict_message(
                frame_index=processed.index,
                width=processed.width,
                height=processed.height,
                verdicts=processed.verdicts,
                fps=fps,
                latency_ms=processed.done_ms - processed.received_ms,
                dropped=processed.dropped,
                extras=processed.extras,
                source=self.source_kind,
                call=self.call.to_json(processed.received_ms),
                smallest_judged_px=self._worker.smallest_judged_px,
            )
        )
        self.messages_sent += 1

    def close(self) -> asyncio.Task:
        """Start closing (idempotent); the returned task finishes when everything is released."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._close(), name=f"close-{self.peer_id}")
        return self._closing

    async def _close(self) -> None:
        self._worker.remove_source(self.source_id)
        self.returned.stop()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.connection.close()
        except Exception:
            log.exception("peer %s: closing the connection failed", self.peer_id)
        self.channel = None
        self._on_closed(self)
        log.info("peer %s: closed", self.peer_id)
