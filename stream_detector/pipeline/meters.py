"""The one clock and the one rate meter: the HUD, the WebRTC panel and the daemon's metrics all read
their fps and latency from these, so no two displays can disagree about what a rate means."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np

from stream_detector.pipeline.types import Stats


def monotonic_ms() -> float:
    return time.monotonic() * 1000.0


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_ms: float = 2000.0) -> None:
        self.window_ms = window_ms
        self._times: deque[float] = deque()

    def tick(self, now_ms: float) -> float:
        self._times.append(now_ms)
        while len(self._times) > 2 and now_ms - self._times[0] > self.window_ms:
            self._times.popleft()
        return self.rate

    @property
    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) * 1000.0 / span if span > 0 else 0.0


class PerformanceMeter:
    """Processed fps and capture-to-overlay latency (last ``window`` frames), for HUDs and reports."""

    def __init__(self, window: int = 300, clock: Callable[[], float] = monotonic_ms) -> None:
        self._clock = clock
        self._rate = RateMeter()
        self._latencies: deque[float] = deque(maxlen=window)

    def record(self, latency_ms: float | None = None, now_ms: float | None = None) -> None:
        self._rate.tick(self._clock() if now_ms is None else now_ms)
        if latency_ms is not None:
            self._latencies.append(float(latency_ms))

    @property
    def fps(self) -> float:
        return self._rate.rate

    def latency_percentile(self, percentile: float) -> float:
        if not self._latencies:
            return 0.0
        return float(np.percentile(np.fromiter(self._latencies, float), percentile))

    def stats(self, dropped_frames: int = 0, backend: str = "") -> Stats:
        return Stats(
            fps=self.fps,
            latency_ms=self.latency_percentile(50),
            dropped_frames=dropped_frames,
            backend=backend,
            extra={"latency_p95_ms": self.latency_percentile(95)},
        )
