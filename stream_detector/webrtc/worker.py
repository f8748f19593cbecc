"""One thread between the peers and the engine: newest frame per peer in, annotated frames out.

Each peer has a one-frame slot; a frame arriving while the previous one waits replaces it (and is
counted as dropped), so a slow model lowers the returned frame rate instead of adding lag. The
worker takes every waiting slot at once and hands them to the annotator as one batch, so several
peers share one classifier call. TensorFlow and MediaPipe therefore only ever run on this thread,
never on the asyncio event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import av
import cv2
import numpy as np

from stream_detector.pipeline.meters import monotonic_ms
from stream_detector.pipeline.types import Frame, Verdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Annotated:
    """What the annotator makes of one frame: the image with the overlay drawn, and its verdicts."""

    image: np.ndarray
    verdicts: Sequence[Verdict]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    # Per face id, what the verdict message adds to the face (``thumbnail``, ``too_small``).
    extras: Mapping[int, Mapping[str, object]] = field(default_factory=dict)


class FrameAnnotator(Protocol):
    """The engine as this server sees it (the real one wraps Engine.process_batch and overlay.draw)."""

    def annotate(self, frames: Sequence[Frame], dropped: Sequence[int]) -> list[Annotated]:
        """One result per frame, in order; frames may come from several sources. ``dropped`` is
        each frame's source's count of frames skipped so far (for the HUD)."""

    def forget(self, source_id: str) -> None:
        """Drop a source's tracks and history (its peer has gone)."""


@dataclass(frozen=True)
class Processed:
    """An annotated frame on its way back to its peer, with what the verdict message needs."""

    video_frame: av.VideoFrame
    verdicts: Sequence[Verdict]
    index: int
    width: int
    height: int
    received_ms: float
    done_ms: float
    dropped: int
    extras: Mapping[int, Mapping[str, object]] = field(default_factory=dict)


@dataclass
class _Source:
    deliver: Callable[[Processed], None]
    processed: int = 0
    dropped: int = 0


@dataclass
class _Waiting:
    frame: av.VideoFrame
    received_ms: float


class FrameWorker:
    """The engine's worker thread for all peers. ``submit`` and ``add/remove_source`` are thread-safe."""

    def __init__(
        self,
        annotator: FrameAnnotator,
        max_batch: int = 8,
        name: str = "webrtc-engine",
        return_max_width: int = 0,
    ) -> None:
        """``return_max_width``: annotated frames wider than this go back scaled down (0: never)."""
        self._annotator = annotator
        self._return_max_width = return_max_width
        # Faces below this size are not judged (stay UNCERTAIN); None when the annotator does not say.
        self.smallest_judged_px: int | None = getattr(annotator, "smallest_judged_px", None)
        self._max_batch = max(1, max_batch)
        self._sources: dict[str, _Source] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._forgotten: list[str] = []
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def source_count(self) -> int:
        with self._condition:
            return len(self._sources)

    def add_source(self, source_id: str, deliver: Callable[[Processed], None]) -> None:
        """``deliver`` is called on the worker thread; it must only hand the result over, quickly."""
        with self._condition:
            if source_id in self._sources:
                raise ValueError(f"source {source_id!r} is already registered")
            self._sources[source_id] = _Source(deliver)

    def remove_source(self, source_id: str) -> None:
        """Stop delivering to a source; the annotator forgets it on the worker thread, between batches."""
        with self._condition:
            if self._sources.pop(source_id, None) is None:
                return
            self._waiting.pop(source_id, None)
            self._forgotten.append(source_id)
            self._condition.notify()

    def submit(self, source_id: str, frame: av.VideoFrame, received_ms: float) -> None:
        with self._condition:
            source = self._sources.get(source_id)
            if source is None:
                return
            # Re-inserting moves the source to the back of the queue, so with more peers than
            # max_batch the ones left out of a batch go first in the next.
            if self._waiting.pop(source_id, None) is not None:
                source.dropped += 1
            self._waiting[source_id] = _Waiting(frame, received_ms)
            self._condition.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; raises if the thread does not end within ``timeout``."""
        with self._condition:
            self._stopping = True
            self._waiting.clear()
            self._condition.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the WebRTC engine worker did not stop within {timeout:.0f} s")
        self._forget_pending()

    def _forget_pending(self) -> None:
        with self._condition:
            forgotten, self._forgotten = self._forgotten, []
        for source_id in forgotten:
            try:
                self._annotator.forget(source_id)
            except Exception:
                log.exception("forgetting source %s failed", source_id)

    def _take_batch(self) -> list[tuple[str, _Source, _Waiting]] | None:
        with self._condition:
            while not self._stopping and not self._waiting and not self._forgotten:
                self._condition.wait()
            if self._stopping:
                return None
            batch = []
            for source_id in list(self._waiting)[: self._max_batch]:
                batch.append((source_id, self._sources[source_id], self._waiting.pop(source_id)))
            return batch

    def _run(self) -> None:
        while True:
            self._forget_pending()
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._process(batch)
            except Exception:
                # The thread serves every peer; one bad frame must not end it.
                log.exception("processing a batch of %d frames failed", len(batch))

    def _returned(self, image: np.ndarray) -> av.VideoFrame:
        """The picture sent back, as the encoder's own YUV 4:2:0: scaled down to ``return_max_width``
        (even sizes, as VP8 wants). OpenCV's BGR->I420 takes ~1 ms on a 1080p frame where PyAV's
        conversion, which the encoder would otherwise run, takes ~12 ms; bilinear scaling ~1 ms where
        area averaging takes ~5 (the verdicts come from the full frame either way)."""
        height, width = image.shape[:2]
        if self._return_max_width and width > self._return_max_width:
            new_width = self._return_max_width - self._return_max_width % 2
            new_height = max(2, round(height * new_width / width / 2) * 2)
            image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
        height, width = image.shape[:2]
        if width % 2 or height % 2:
            return av.VideoFrame.from_ndarray(image, format="bgr24")  # I420 needs even sizes
        return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")

    def _process(self, batch: list[tuple[str, _Source, _Waiting]]) -> None:
        frames = []
        for source_id, source, waiting in batch:
            image = waiting.frame.to_ndarray(format="bgr24")
            frames.append(Frame(image, source.processed, waiting.received_ms, source_id))
        try:
            results = self._annotator.annotate(frames, [source.dropped for _, source, _ in batch])
        except Exception:
            # A failing model must not take every call down with it; the peers see no new frames
            # (their panels say so) and the log says why.
            log.exception("the engine failed on a batch of %d frames", len(frames))
            time.sleep(0.1)
            return
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        done_ms = monotonic_ms()
        for (_, source, waiting), frame, result in zip(batch, frames, results, strict=True):
            image = np.ascontiguousarray(result.image)
            video_frame = self._returned(image)
            # The returned frame keeps the sender's media time, so players pace it as captured.
            video_frame.pts = waiting.frame.pts
            if waiting.frame.time_base is not None:
                video_frame.time_base = waiting.frame.time_base
            processed = Processed(
                video_frame=video_frame,
                verdicts=tuple(result.verdicts),
                index=frame.index,
                width=image.shape[1],
                height=image.shape[0],
                received_ms=waiting.received_ms,
                done_ms=done_ms,
                dropped=source.dropped,
                extras=result.extras,
            )
            source.processed += 1
            try:
                source.deliver(processed)
            except Exception:
                log.exception("delivering a frame to its peer failed")
