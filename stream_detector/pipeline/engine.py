"""The live engine: frames in, per-face verdicts out. Every entry point (webcam, scan, daemon, WebRTC)
runs frames through this one object.

Public API (kept stable; the daemon and the WebRTC server build on it)::

    settings = EngineSettings(classify_hz=15, backend="auto")
    engine = build_engine(settings)            # real MediaPipe detector + LiteRT/Keras classifier
    engine = build_engine(settings, shared_detectors=True)   # many sources: a pool of detectors
    result = engine.process(frame)             # one frame -> FrameResult
    results = engine.process_batch(frames)     # frames of *different* sources, ONE classifier call
    engine.prepare("cam-2")                    # optional: start a source's detector before its frames
    engine.close_source("cam-2")               # forget a source (peer left, camera removed)
    engine.close()

    Engine(detector_factory, classifier, settings)   # the same with injected stages (tests, remote)

One frame goes: detect (the source's own detector: MediaPipe VIDEO mode needs one timestamp line per
source) -> track (stable ids) -> crop the faces that are *due* -> classify all due crops of all frames
in the call as one batch -> smooth per track -> verdicts.

- Rate: a face is due when it is new, or when ``1000 / classify_hz`` ms have passed since its last
  classification (``classify_hz=0``: every frame). Detection and tracking run on every frame, so the box
  follows the face at the full frame rate while the classifier runs at a fixed cost per face.
- Quality: a face whose box is smaller than ``min_verdict_face_size`` px, or whose crop is blurred
  (``crop_sharpness`` below ``min_sharpness``), is not classified; its verdict decays to UNCERTAIN
  (see smoothing.py) instead of resting on a guess.
- State (tracker, smoother, rate limiter, detector) is per ``Frame.source_id``; the classifier is
  shared. ``process`` and ``process_batch`` are serialised by a lock, so several threads may call them.
- Timestamps are ``Frame.timestamp_ms``; nothing in here reads the wall clock except the stage
  timings and the processed-fps meter.

Capture (the newest-frame slot and its dropped-frame counter) lives in sources.py; drawing in
overlay.py. ``PerformanceMeter`` turns per-frame latencies into the HUD's fps and p50/p95 figures.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from stream_detector.pipeline.crops import CROP_SIZE, crop_face
from stream_detector.pipeline.meters import RateMeter, monotonic_ms
from stream_detector.pipeline.smoothing import Smoother, SmootherSettings
from stream_detector.pipeline.tracking import Tracker, TrackerSettings, appearance_descriptor
from stream_detector.pipeline.types import Classifier, FaceDetector, Frame, TrackedFace, Verdict
from stream_detector.settings import setting

STAGES = ("detect", "track", "crop", "classify", "smooth")


@dataclass(frozen=True)
class EngineSettings:
    """Everything that shapes the engine's behaviour; the daemon's TOML maps onto these fields."""

    detector_range: str = setting(
        "full", "BlazeFace model: full (up to ~5 m) or short (within ~2 m, faster)", choices=("full", "short")
    )
    min_detection_confidence: float = setting(0.5, "BlazeFace score a face needs", minimum=0.0, maximum=1.0)
    min_face_size: int = setting(
        24, "px; the detector drops smaller boxes altogether", minimum=1, maximum=4096
    )
    tile_above_px: int = setting(
        1600,
        "px; wider frames (a shared call gallery) are also searched in overlapping tiles; 0 = never",
        minimum=0,
        maximum=16384,
    )
    min_verdict_face_size: int = setting(
        48, "px; smaller faces are tracked and shown but stay UNCERTAIN", minimum=1, maximum=4096
    )
    min_sharpness: float = setting(
        0.25,
        "crop_sharpness() of the 224 px crop below which a face is too blurred to judge",
        minimum=0.0,
        maximum=1000.0,
    )
    classify_hz: float = setting(
        15.0, "classifications per second per face; 0 = every frame", minimum=0.0, maximum=60.0
    )
    backend: str = setting(
        "auto",
        "classifier: auto (the fastest present), int8, fp32, keras",
        choices=("auto", "int8", "fp32", "keras"),
    )
    model_dir: str | None = setting(
        None, "folder of the model files (default: the search path, docs/development.md)"
    )
    threads: int = setting(
        2, "threads for the classifier and the shared detector pool", minimum=1, maximum=64
    )
    tracking: TrackerSettings = field(default_factory=TrackerSettings)
    smoothing: SmootherSettings = field(default_factory=SmootherSettings)

    def __post_init__(self) -> None:
        if self.classify_hz < 0 or not math.isfinite(self.classify_hz):
            raise ValueError(f"classify_hz must be >= 0 (0 = every frame), got {self.classify_hz}")
        if self.detector_range not in ("full", "short"):
            raise ValueError(f"detector_range must be 'full' or 'short', got {self.detector_range!r}")


def settings_from_arguments(arguments) -> EngineSettings:
    """EngineSettings from the options every command declares (apps/arguments.py); a bad value is one line."""
    from stream_detector.errors import StreamDetectorError

    try:
        return EngineSettings(
            detector_range=arguments.detector_range,
            min_face_size=arguments.min_face_size,
            classify_hz=arguments.classify_hz,
            backend=arguments.backend,
        )
    except ValueError as error:
        raise StreamDetectorError(str(error)) from None


@dataclass(frozen=True)
class FrameResult:
    """What the engine made of one frame.

    ``faces`` and ``verdicts`` are in the same order (one per detected face); a face's ``p_fake`` is
    the raw calibrated score when it was classified in this frame, else None. ``timings_ms`` holds the
    per-stage times (``STAGES`` plus ``total``) spent on this frame; ``classify`` is the time of the
    batch call the frame took part in. ``fps`` is the source's processed rate over the last ~2 s.
    """

    frame: Frame
    faces: tuple[TrackedFace, ...]
    verdicts: tuple[Verdict, ...]
    timings_ms: Mapping[str, float]
    classified_ids: frozenset[int] = frozenset()
    unusable_ids: frozenset[int] = frozenset()
    fps: float = 0.0


def crop_sharpness(crop_rgb: np.ndarray) -> float:
    """How much fine detail a crop has, independent of its brightness and contrast:
    100 x variance of the Laplacian / variance of the grey levels. Sharp faces score ~1-5, a face
    blurred by 1.5 px or upscaled from ~25 px scores ~0.2-0.35; a dark, low-contrast webcam face
    keeps its score (plain Laplacian variance would call it blurred)."""
    gray = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    contrast = float(gray.var())
    return 100.0 * float(cv2.Laplacian(gray, cv2.CV_32F).var()) / max(contrast, 1.0)


@dataclass
class _SourceState:
    detector: FaceDetector
    tracker: Tracker
    smoother: Smoother
    next_due_ms: dict[int, float] = field(default_factory=dict)
    rate: RateMeter = field(default_factory=RateMeter)


@dataclass
class _Pending:
    """One frame between detection and smoothing, while its crops wait for the shared batch."""

    frame: Frame
    state: _SourceState
    faces: tuple[TrackedFace, ...]
    due_ids: list[int]
    unusable_ids: set[int]
    timings: dict[str, float]


class Engine:
    """Detect -> track -> crop -> batch classify -> smooth, with per-source state (module docstring)."""

    def __init__(
        self,
        detector_factory: Callable[[], FaceDetector],
        classifier: Classifier,
        settings: EngineSettings | None = None,
        clock: Callable[[], float] = monotonic_ms,
        owned: Sequence[object] = (),
    ) -> None:
        """``owned``: resources the stages share (a detector pool), closed with the engine."""
        self.settings = settings or EngineSettings()
        self.classifier = classifier
        self._owned = list(owned)
        self._detector_factory = detector_factory
        self._clock = clock
        self._sources: dict[str, _SourceState] = {}
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self.classified_total = 0

    @property
    def backend(self) -> str:
        """The classifier in use, for HUDs and reports (e.g. ``litert-int8``)."""
        return str(getattr(self.classifier, "name", type(self.classifier).__name__))

    @property
    def description(self) -> str:
        return f"{self.backend}, blazeface-{self.settings.detector_range}"

    def process(self, frame: Frame) -> FrameResult:
        return self.process_batch([frame])[0]

    def process_batch(self, frames: Sequence[Frame]) -> list[FrameResult]:
        """Results in the order of ``frames``. Frames of distinct sources share one classifier call;
        two frames of the same source in one call are processed in order, in successive batches."""
        results: list[FrameResult] = []
        with self._lock:
            batch: list[Frame] = []
            for frame in frames:
                if any(other.source_id == frame.source_id for other in batch):
                    results.extend(self._process_distinct(batch))
                    batch = []
                batch.append(frame)
            if batch:
                results.extend(self._process_distinct(batch))
        return results

    def _process_distinct(self, frames: Sequence[Frame]) -> list[FrameResult]:
        states = [self._state(frame.source_id) for frame in frames]
        if len(frames) > 1 and self.settings.threads > 1:
            # Each source's detector runs its C++ graph on its own thread without the GIL, and each
            # source's tracker is its own: frames of distinct sources are detected and cropped side
            # by side, so a batch of several cameras uses every core instead of one.
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="engine-detect")
            pending = list(self._pool.map(self._detect_and_crop, frames, states))
        else:
            pending = [
                self._detect_and_crop(frame, state) for frame, state in zip(frames, states, strict=True)
            ]
        crops = [crop for item in pending for crop in item[1]]
        started = time.perf_counter()
        scores = (
            np.asarray(self.classifier.classify(np.stack(crops)), np.float32).reshape(-1)
            if crops
            else np.zeros((0,), np.float32)
        )
        classify_ms = (time.perf_counter() - started) * 1000.0
        if len(scores) != len(crops):
            raise RuntimeError(
                f"classifier {self.backend} returned {len(scores)} scores for {len(crops)} crops"
            )
        self.classified_total += len(crops)
        results = []
        offset = 0
        for item, item_crops in pending:
            item_scores = scores[offset : offset + len(item_crops)]
            offset += len(item_crops)
            item.timings["classify"] = classify_ms if len(item_crops) else 0.0
            # A NaN is a crop the classifier could not score (a remote replica gone): that face keeps
            # its smoothed verdict, as between classifications, instead of taking a made-up score.
            scored = {
                track_id: score
                for track_id, score in zip(item.due_ids, item_scores, strict=True)
                if math.isfinite(score)
            }
            results.append(self._smooth(item, scored))
        return results

    def _state(self, source_id: str) -> _SourceState:
        state = self._sources.get(source_id)
        if state is None:
            state = _SourceState(
                detector=self._detector_factory(),
                tracker=Tracker(self.settings.tracking),
                smoother=Smoother(self.settings.smoothing),
            )
            self._sources[source_id] = state
        return state

    def _detect_and_crop(self, frame: Frame, state: _SourceState) -> tuple[_Pending, list[np.ndarray]]:
        settings = self.settings
        timings: dict[str, float] = {}
        started = time.perf_counter()
        detections = state.detector.detect(frame)
        after_detect = time.perf_counter()
        timings["detect"] = (after_detect - started) * 1000.0

        appearances = [appearance_descriptor(frame.image, box) for box in detections.boxes]
        faces = state.tracker.update(detections, frame.timestamp_ms, appearances)
        live = state.tracker.live_ids()
        gone = [track_id for track_id in state.next_due_ms if track_id not in live]
        for track_id in gone:
            del state.next_due_ms[track_id]
        state.smoother.forget(track_id for track_id in state.smoother.known_ids() if track_id not in live)
        after_track = time.perf_counter()
        timings["track"] = (after_track - after_detect) * 1000.0

        period_ms = 1000.0 / settings.classify_hz if settings.classify_hz > 0 else 0.0
        due_ids: list[int] = []
        unusable: set[int] = set()
        crops: list[np.ndarray] = []
        for face in faces:
            x1, y1, x2, y2 = face.box
            if min(x2 - x1, y2 - y1) < settings.min_verdict_face_size:
                unusable.add(face.id)
                continue
            next_due = state.next_due_ms.get(face.id)
            # A quarter-period of slack so camera jitter does not skip a whole frame's worth of rate.
            if next_due is not None and frame.timestamp_ms < next_due - 0.25 * period_ms:
                continue
            # Credit-based: the next due time follows the schedule, not the frame that happened to
            # land, so the average rate is classify_hz; never let a stall bank a burst of credit.
            base = frame.timestamp_ms if next_due is None else next_due
            state.next_due_ms[face.id] = max(base + period_ms, frame.timestamp_ms + 0.5 * period_ms)
            crop = crop_face(frame.image, face.box)
            if settings.min_sharpness > 0 and crop_sharpness(crop) < settings.min_sharpness:
                unusable.add(face.id)
                continue
            due_ids.append(face.id)
            crops.append(crop)
        timings["crop"] = (time.perf_counter() - after_track) * 1000.0
        return _Pending(frame, state, faces, due_ids, unusable, timings), crops

    def _smooth(self, item: _Pending, scores: Mapping[int, float]) -> FrameResult:
        started = time.perf_counter()
        faces = tuple(
            replace(face, p_fake=float(scores[face.id])) if face.id in scores else face for face in item.faces
        )
        verdicts = item.state.smoother.update(faces, item.frame.timestamp_ms, item.unusable_ids)
        item.timings["smooth"] = (time.perf_counter() - started) * 1000.0
        item.timings["total"] = sum(item.timings[stage] for stage in STAGES)
        fps = item.state.rate.tick(self._clock())
        return FrameResult(
            frame=item.frame,
            faces=faces,
            verdicts=verdicts,
            timings_ms=dict(item.timings),
            classified_ids=frozenset(scores),
            unusable_ids=frozenset(item.unusable_ids),
            fps=fps,
        )

    def prepare(self, source_id: str = "0") -> None:
        """Create a source's detector now, and run the classifier once: starting MediaPipe takes
        seconds, which a live source would otherwise spend dropping frames behind the first one."""
        with self._lock:
            self._state(source_id)
            if self.classified_total == 0:
                self.classifier.classify(np.zeros((1, CROP_SIZE, CROP_SIZE, 3), np.uint8))

    def sources(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def close_source(self, source_id: str) -> None:
        """Drop a source's detector, tracks and evidence (a new frame of it starts afresh)."""
        with self._lock:
            state = self._sources.pop(source_id, None)
        if state is not None:
            _close(state.detector)

    def close(self) -> None:
        with self._lock:
            states, self._sources = list(self._sources.values()), {}
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for state in states:
            _close(state.detector)
        for resource in self._owned:
            _close(resource)
        _close(self.classifier)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close(stage: object) -> None:
    close = getattr(stage, "close", None)
    if callable(close):
        close()


def build_engine(
    settings: EngineSettings | None = None,
    video: bool = True,
    shared_detectors: bool = False,
    classifier: Classifier | None = None,
) -> Engine:
    """An Engine on the real stages: MediaPipe BlazeFace and ``load_classifier(settings.backend)``.
    ModelError if a model is missing.

    Detectors: one per source in VIDEO mode (``video=False``: IMAGE mode, for unrelated still images),
    or, with ``shared_detectors`` (many sources: the daemon), a pool of ``settings.threads`` IMAGE-mode
    detectors that every source borrows from (faces.DetectorPool). ``classifier``: another one (a
    cluster's camera uses the Serve deployment), so no model is loaded here."""
    from stream_detector.pipeline.classifier import load_classifier
    from stream_detector.pipeline.faces import (
        DetectorPool,
        MediaPipeFaceDetector,
        TiledFaceDetector,
        detector_model_path,
    )

    settings = settings or EngineSettings()
    # Fail now, not on the first frame, if the detector model is missing.
    detector_model_path(settings.detector_range)  # type: ignore[arg-type]
    if classifier is None:
        classifier = load_classifier(settings.backend, settings.model_dir, threads=settings.threads)

    def make_plain_detector(video_mode: bool) -> FaceDetector:
        return MediaPipeFaceDetector(
            model_range=settings.detector_range,  # type: ignore[arg-type]
            min_confidence=settings.min_detection_confidence,
            min_face_size=settings.min_face_size,
            video=video_mode,
        )

    def make_detector(video_mode: bool) -> FaceDetector:
        detector = make_plain_detector(video_mode)
        if settings.tile_above_px <= 0:
            return detector
        return TiledFaceDetector(detector, lambda: make_plain_detector(False), settings.tile_above_px)

    if shared_detectors:
        pool = DetectorPool(lambda: make_detector(False), size=max(1, settings.threads))
        return Engine(pool.handle, classifier, settings, owned=(pool,))
    return Engine(lambda: make_detector(video), classifier, settings)
