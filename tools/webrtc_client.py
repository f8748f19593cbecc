"""A Python client of the call check, for tests and the benchmark: send a track, get verdicts back.

``StampedTrack`` writes a frame number into each frame it sends (a row of black and white blocks);
``read_stamp`` finds it again in the annotated frame that comes back, which is how the benchmark
measures capture-to-return latency without trusting RTP timestamps across two hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from stream_detector.errors import StreamDetectorError
from stream_detector.webrtc.signalling import VERDICT_CHANNEL_LABEL

VIDEO_CLOCK_RATE = 90000
STAMP_BITS = 12
STAMP_CHECK_BITS = 4
STAMP_BLOCK = 16
STAMP_MARGIN = 8


def _stamp_bits(number: int) -> list[int]:
    value = number % (1 << STAMP_BITS)
    check = sum((value >> shift) & 0xF for shift in range(0, STAMP_BITS, 4)) & 0xF
    word = (value << STAMP_CHECK_BITS) | check
    total = STAMP_BITS + STAMP_CHECK_BITS
    return [(word >> (total - 1 - position)) & 1 for position in range(total)]


def write_stamp(image: np.ndarray, number: int) -> None:
    """Draw ``number`` (mod 4096, with a 4-bit check) as blocks along the bottom-left edge, in place."""
    height = image.shape[0]
    top = height - STAMP_MARGIN - STAMP_BLOCK
    for position, bit in enumerate(_stamp_bits(number)):
        left = STAMP_MARGIN + position * STAMP_BLOCK
        image[top : top + STAMP_BLOCK, left : left + STAMP_BLOCK] = 235 if bit else 16


def read_stamp(image: np.ndarray, scale: float = 1.0) -> int | None:
    """The number written by ``write_stamp``, or None when the blocks do not pass their check.

    ``scale``: the image's width over the stamped frame's (the server may send its video back smaller)."""
    gray = image.mean(axis=2) if image.ndim == 3 else image
    height = gray.shape[0]
    size = STAMP_BLOCK * scale
    top = height - (STAMP_MARGIN + STAMP_BLOCK) * scale
    inner = size / 4
    bits = []
    for position in range(STAMP_BITS + STAMP_CHECK_BITS):
        left = (STAMP_MARGIN + position * STAMP_BLOCK) * scale
        block = gray[
            round(top + inner) : round(top + size - inner), round(left + inner) : round(left + size - inner)
        ]
        bits.append(1 if block.mean() > 128 else 0)
    word = 0
    for bit in bits:
        word = (word << 1) | bit
    value = word >> STAMP_CHECK_BITS
    if _stamp_bits(value) != bits:
        return None
    return value


def frame_stamp(frame: av.VideoFrame, sent_width: int | None = None) -> int | None:
    """``read_stamp`` on a decoded frame's luma plane, without converting the whole frame to BGR;
    ``sent_width``: the stamped frame's width, when the frame came back at another size."""
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)[:, : frame.width]
    return read_stamp(luma, frame.width / sent_width if sent_width else 1.0)


class StampedTrack(MediaStreamTrack):
    """Frames from ``render(index)`` (BGR) at ``fps``, each stamped with its number.

    ``sent_at`` maps a stamp to the monotonic time the frame was handed to the encoder (captured).
    """

    kind = "video"

    def __init__(self, render: Callable[[int], np.ndarray], fps: float = 30.0) -> None:
        super().__init__()
        self._render = render
        self._fps = fps
        self._index = 0
        self._start: float | None = None
        self.sent_at: dict[int, float] = {}

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index / self._fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        image = np.array(self._render(self._index), dtype=np.uint8, copy=True)
        stamp = self._index % (1 << STAMP_BITS)
        write_stamp(image, stamp)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = int(self._index * VIDEO_CLOCK_RATE / self._fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self.sent_at[stamp] = time.monotonic()
        self._index += 1
        return frame


@dataclass
class Call:
    """One call to the server: the connection, the verdict messages so far, the returned video."""

    connection: RTCPeerConnection
    channel: RTCDataChannel
    messages: list[dict] = field(default_factory=list)
    returned: asyncio.Future[MediaStreamTrack] | None = None
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    message_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        await self.connection.close()


async def start_call(
    http: aiohttp.ClientSession, base_url: str, track: MediaStreamTrack, token: str | None = None
) -> Call:
    """Offer ``track`` to the server at ``base_url``; raises StreamDetectorError with its refusal."""
    connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    loop = asyncio.get_running_loop()
    returned: asyncio.Future[MediaStreamTrack] = loop.create_future()
    connection.addTrack(track)
    channel = connection.createDataChannel(VERDICT_CHANNEL_LABEL)
    call = Call(connection=connection, channel=channel, returned=returned)

    @connection.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        if remote.kind == "video" and not returned.done():
            returned.set_result(remote)

    @channel.on("open")
    def on_open() -> None:
        call.channel_open.set()

    @channel.on("message")
    def on_message(message: str | bytes) -> None:
        call.messages.append(json.loads(message))
        call.message_arrived.set()

    await connection.setLocalDescription(await connection.createOffer())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local = connection.localDescription
    async with http.post(
        f"{base_url}/offer", json={"sdp": local.sdp, "type": local.type}, headers=headers
    ) as response:
        body = await response.json(content_type=None)
        if response.status != 200:
            await connection.close()
            raise StreamDetectorError(f"offer refused ({response.status}): {body.get('error')}")
    await connection.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    return call


async def read_frames(
    track: MediaStreamTrack, on_frame: Callable[[av.VideoFrame, float], None], stop: asyncio.Event
) -> None:
    """Call ``on_frame(frame, arrival_monotonic_s)`` for each returned frame until ``stop`` or the end."""
    with contextlib.suppress(MediaStreamError):
        while not stop.is_set():
            frame = await track.recv()
            on_frame(frame, time.monotonic())
