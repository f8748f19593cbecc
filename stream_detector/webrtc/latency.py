"""Receive a video frame as soon as its last packet arrives, instead of one frame later.

aiortc's video jitter buffer hands a frame to the decoder only when a packet of the *next* frame
arrives, which adds a whole frame interval (33 ms at 30 fps) to every received frame. Senders mark
the last RTP packet of each frame (the marker bit, RFC 7741 for VP8, RFC 6184 for H.264), as
browsers rely on; ``marker_frame_assembly`` makes aiortc's receivers use it too. The patch replaces
the class aiortc's receiver module instantiates, so it is process-wide while active.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

_patch_lock = threading.Lock()


class MarkerJitterBuffer(JitterBuffer):
    """A video jitter buffer that releases a frame at its marked last packet."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._origin is None:
            return None
        while True:
            first = self._packets[self._origin % self._capacity]
            if first is None or first._data or first.marker:
                break
            # A padding-only packet (a bandwidth probe) after a released frame carries nothing for
            # the decoder; left at the front it would be handed over as an empty frame.
            self.remove(1)
        timestamp = None
        packets = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                break
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                break
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
        # No marked end yet (or a sender that does not mark): aiortc's rule still applies.
        return super()._remove_frame(sequence_number)


def _jitter_buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> JitterBuffer:
    if is_video and prefetch == 0:
        return MarkerJitterBuffer(capacity=capacity, prefetch=prefetch, is_video=is_video)
    return JitterBuffer(capacity=capacity, prefetch=prefetch, is_video=is_video)


@contextlib.contextmanager
def marker_frame_assembly() -> Iterator[None]:
    """Receivers created while this is active assemble video frames at the marker bit."""
    with _patch_lock:
        previous = aiortc.rtcrtpreceiver.JitterBuffer
        aiortc.rtcrtpreceiver.JitterBuffer = _jitter_buffer
    try:
        yield
    finally:
        with _patch_lock:
            aiortc.rtcrtpreceiver.JitterBuffer = previous
