"""The real ``FrameAnnotator``: the shared engine's verdicts drawn by the shared overlay."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from stream_detector.pipeline.crops import crop_square
from stream_detector.pipeline.engine import Engine
from stream_detector.pipeline.meters import PerformanceMeter, monotonic_ms
from stream_detector.pipeline.overlay import draw
from stream_detector.pipeline.types import Frame
from stream_detector.webrtc.worker import Annotated

THUMBNAIL_PX = 64
THUMBNAIL_EVERY_MS = 1000.0  # at most once a second per face: a few kB/s per face on the channel


def thumbnail(image: np.ndarray, box: Sequence[float], size: int = THUMBNAIL_PX) -> str:
    """A small JPEG of the face as a data URL (which participant this row is): the engine's own crop
    square (crops.crop_square, the face with some context), empty for a box off the frame."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return ""
    x, y, side = crop_square(box, image.shape)
    crop = cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 70])
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode() if ok else ""


class ThumbnailSchedule:
    """Which faces get a new thumbnail now: each at most every ``every_ms``. Pure (times are
    arguments); one per source."""

    def __init__(self, every_ms: float = THUMBNAIL_EVERY_MS) -> None:
        self.every_ms = every_ms
        self._last: dict[int, float] = {}

    def due(self, face_id: int, now_ms: float) -> bool:
        last = self._last.get(face_id)
        if last is not None and now_ms - last < self.every_ms:
            return False
        self._last[face_id] = now_ms
        return True


class EngineAnnotator:
    """Runs on the worker thread only. Frame timestamps are arrival times on the monotonic clock, so
    the HUD's latency is the server's arrival-to-overlay time."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = monotonic_ms) -> None:
        self._engine = engine
        self._clock = clock
        self._meters: dict[str, PerformanceMeter] = {}
        self._thumbnails: dict[str, ThumbnailSchedule] = {}
        # Faces smaller than this stay UNCERTAIN (the engine does not judge them): the page says so.
        self.smallest_judged_px = int(engine.settings.min_verdict_face_size)

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
            schedule = self._thumbnails.setdefault(frame.source_id, ThumbnailSchedule())
            extras: dict[int, dict[str, object]] = {}
            for verdict in result.verdicts:
                x1, y1, x2, y2 = verdict.box
                extra: dict[str, object] = {
                    "too_small": min(x2 - x1, y2 - y1) < self.smallest_judged_px,
                    # Classified in this frame (faces are classified at --classify-hz, not every frame).
                    "classified": verdict.id in result.classified_ids,
                }
                # Cut before the overlay is drawn on the frame: the thumbnail shows the face itself.
                if schedule.due(verdict.id, now):
                    extra["thumbnail"] = thumbnail(frame.image, verdict.box)
                extras[verdict.id] = extra
            # The frame's image was decoded for this call alone, so drawing in place is safe.
            image = draw(frame.image, result.verdicts, stats, copy=False)
            annotated.append(Annotated(image, result.verdicts, result.timings_ms, extras))
        return annotated

    def forget(self, source_id: str) -> None:
        self._meters.pop(source_id, None)
        self._thumbnails.pop(source_id, None)
        self._engine.close_source(source_id)

    def close(self) -> None:
        self._engine.close()
