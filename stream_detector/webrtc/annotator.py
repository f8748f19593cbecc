"""The real ``FrameAnnotator``: the shared engine's verdicts drawn by the shared overlay."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from stream_detector.pipeline.engine import Engine
from stream_detector.pipeline.meters import PerformanceMeter, monotonic_ms
from stream_detector.pipeline.overlay import draw
from stream_detector.pipeline.types import Frame
from stream_detector.webrtc.worker import Annotated


class EngineAnnotator:
    """Runs on the worker thread only. Frame timestamps are arrival times on the monotonic clock, so
    the HUD's latency is the server's arrival-to-overlay time."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = monotonic_ms) -> None:
        self._engine = engine
        self._clock = clock
        self._meters: dict[str, PerformanceMeter] = {}

    def annotate(self, frames: Sequence[Frame], dropped: Sequence[int]) -> list[Annotated]:
        results = self._engine.process_batch(frames)
        annotated = []
        for frame, result, dropped_frames in zip(frames, results, dropped, strict=True):
            meter = self._meters.get(frame.source_id)
            if meter is None:
                meter = self._meters[frame.source_id] = PerformanceMeter(clock=self._clock)
            now = self._clock()
            meter.record(now - frame.timestamp_ms, now)
            stats = meter.stats(dropped_frames=dropped_frames, backend=self._engine.backend)
            # The frame's image was decoded for this call alone, so drawing in place is safe.
            image = draw(frame.image, result.verdicts, stats, copy=False)
            annotated.append(Annotated(image, result.verdicts, result.timings_ms))
        return annotated

    def forget(self, source_id: str) -> None:
        self._meters.pop(source_id, None)
        self._engine.close_source(source_id)

    def close(self) -> None:
        self._engine.close()
