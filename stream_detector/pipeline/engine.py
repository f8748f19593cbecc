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
- Budget: with ``classify_budget_hz``, a source's faces share that many classifications per second
  (each face's rate is ``min(classify_hz, budget / faces)``), spent from a token bucket: when more
  faces are due than the bucket holds, the longest-waiting go first and the others in the next frames,
  so a gallery's faces are classified in turns instead of all in one slow frame.
- Background: with ``classify_in_background``, the due crops go to the classifier on a thread of its
  own and the frame returns at once; the scores land on each source's next frame. One job runs at a
  time: frames that arrive meanwhile take no crops (their faces stay due).
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

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from stream_detector.pipeline.crops import CROP_SIZE, crop_face
from stream_detector.pipeline.meters import RateMeter, monotonic_ms
from stream_detector.pipeline.smoothing import Smoother, SmootherSettings, live_threshold
from stream_detector.pipeline.tracking import Tracker, TrackerSettings, appearance_descriptor
from stream_detector.pipeline.types import Classifier, FaceDetector, Frame, TrackedFace, Verdict
from stream_detector.settings import setting

log = logging.getLogger(__name__)

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
    tiles_every_ms: float = setting(
        1000.0,
        "ms between tiled searches; in between, faces the whole frame misses are looked for where they "
        "were; 0 = every frame",
        minimum=0.0,
        maximum=60000.0,
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
    classify_budget_hz: float = setting(
        0.0,
        "classifications per second per source, shared by its faces (a call gallery); 0 = no limit",
        minimum=0.0,
        maximum=1000.0,
    )
    classify_in_background: bool = setting(
        False,
        "classify on a thread of its own: a frame comes back after detection and tracking, and its "
        "faces' scores land on a later frame (a live call, where latency counts more than one frame)",
    )
    backend: str = setting(
        "auto",
        "classifier: auto (the fastest present), int8, fp32, keras",
        choices=("auto", "int8", "fp32", "keras"),
    )
    # The FAKE threshold belongs to the scoring: code that turns this off should also pass
    # smoothing=SmootherSettings(fake_enter=live_threshold(False)), as settings_from_arguments and the
    # daemon's config do; otherwise the mirror-averaged threshold (lower) judges plain scores.
    mirror_average: bool = setting(
        True,
        "score each face crop and its left-right mirror in one call and average the two logits: "
        "~+0.01 ROC-AUC on validation faces for twice the classifier's work (model card)",
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
            mirror_average=arguments.mirror_average,
            # No command takes a FAKE threshold: it is the one recorded for the scoring chosen.
            smoothing=SmootherSettings(fake_enter=live_threshold(arguments.mirror_average)),
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
    # The classification budget's token bucket (classify_budget_hz): tokens left, and when counted.
    tokens: float | None = None
    tokens_ms: float = 0.0
    # classify_in_background: scores finished on the classifier's thread, for the next frame.
    finished_scores: dict[int, float] = field(default_factory=dict)


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
        # classify_in_background: one job at a time on its own thread; frames that arrive while it
        # runs take no crops (their faces stay due), so the classifier never queues up work.
        self._background: ThreadPoolExecutor | None = None
        self._background_job: Future | None = None
        self._finished_lock = threading.Lock()

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
        if self.settings.classify_in_background:
            if crops:
                self._start_background_job([item for item, _ in pending], crops)
            results = []
            for item, _ in pending:
                item.timings["classify"] = 0.0
                with self._finished_lock:
                    finished, item.state.finished_scores = item.state.finished_scores, {}
                present = {face.id for face in item.faces}
                results.append(
                    self._smooth(item, {key: value for key, value in finished.items() if key in present})
                )
            return results
        started = time.perf_counter()
        scores = self._classify(crops)
        classify_ms = (time.perf_counter() - started) * 1000.0
        results = []
        offset = 0
        for item, item_crops in pending:
            item_scores = scores[offset : offset + len(item_crops)]
            offset += len(item_crops)
            item.timings["classify"] = classify_ms if len(item_crops) else 0.0
            results.append(self._smooth(item, self._scored(item.due_ids, item_scores)))
        return results

    def _classify(self, crops: list[np.ndarray]) -> np.ndarray:
        scores = (
            np.asarray(self.classifier.classify(np.stack(crops)), np.float32).reshape(-1)
            if crops
            else np.zeros((0,), np.float32)
        )
        if len(scores) != len(crops):
            raise RuntimeError(
                f"classifier {self.backend} returned {len(scores)} scores for {len(crops)} crops"
            )
        self.classified_total += len(crops)
        return scores

    @staticmethod
    def _scored(due_ids: Sequence[int], scores: np.ndarray) -> dict[int, float]:
        # A NaN is a crop the classifier could not score (a remote replica gone): that face keeps
        # its smoothed verdict, as between classifications, instead of taking a made-up score.
        return {
            track_id: float(score)
            for track_id, score in zip(due_ids, scores, strict=True)
            if math.isfinite(score)
        }

    def _background_busy(self) -> bool:
        return self._background_job is not None and not self._background_job.done()

    def _start_background_job(self, items: Sequence[_Pending], crops: list[np.ndarray]) -> None:
        if self._background is None:
            self._background = ThreadPoolExecutor(1, thread_name_prefix="engine-classify")
        owners = [(item.state, item.due_ids) for item in items if item.due_ids]

        def job() -> None:
            try:
                scores = self._classify(crops)
            except Exception:
                log.exception("classifying %d crops failed; their faces keep their verdicts", len(crops))
                return
            offset = 0
            for state, due_ids in owners:
                scored = self._scored(due_ids, scores[offset : offset + len(due_ids)])
                offset += len(due_ids)
                with self._finished_lock:
                    state.finished_scores.update(scored)

        self._background_job = self._background.submit(job)

    def wait_for_classification(self, timeout: float = 10.0) -> None:
        """Until the background classification in flight (if any) has finished: its scores land on
        the next frame of each source (tests; ``close`` waits for it by itself)."""
        job = self._background_job
        if job is not None:
            job.result(timeout)

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

        judged = [
            face
            for face in faces
            if min(face.box[2] - face.box[0], face.box[3] - face.box[1]) >= settings.min_verdict_face_size
        ]
        unusable: set[int] = {face.id for face in faces} - {face.id for face in judged}
        rate_hz = settings.classify_hz
        budget = settings.classify_budget_hz
        if budget > 0 and judged:
            share = budget / len(judged)
            rate_hz = min(rate_hz, share) if rate_hz > 0 else share
        period_ms = 1000.0 / rate_hz if rate_hz > 0 else 0.0
        due: list[TrackedFace] = []
        for face in judged:
            next_due = state.next_due_ms.get(face.id)
            # A quarter-period of slack so camera jitter does not skip a whole frame's worth of rate.
            if next_due is None or frame.timestamp_ms >= next_due - 0.25 * period_ms:
                due.append(face)
        if settings.classify_in_background and self._background_busy():
            due = []  # the classifier is still on earlier crops: these faces stay due
        if budget > 0:
            # New faces first (a first verdict soon), then the longest overdue.
            due.sort(key=lambda face: state.next_due_ms.get(face.id, -math.inf))
            allowed = self._spend_budget(state, frame.timestamp_ms, budget, len(judged), len(due))
            due = due[:allowed]
        due_ids: list[int] = []
        crops: list[np.ndarray] = []
        for face in due:
            next_due = state.next_due_ms.get(face.id)
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

    @staticmethod
    def _spend_budget(state: _SourceState, now_ms: float, budget_hz: float, faces: int, wanted: int) -> int:
        """How many of ``wanted`` due faces this frame may classify: tokens accrue at ``budget_hz``,
        one per classification; at most one token is carried from frame to frame, so the faces take
        turns instead of saving up for one slow frame. A new source starts with one per face."""
        if state.tokens is None or now_ms < state.tokens_ms:
            state.tokens = float(max(1, faces))  # a new source (or a restarted clock): a full round
        else:
            earned = budget_hz * (now_ms - state.tokens_ms) / 1000.0
            state.tokens = min(state.tokens, 1.0) + earned
        state.tokens_ms = now_ms
        allowed = min(wanted, int(state.tokens + 1e-9))
        state.tokens -= allowed
        return allowed

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
            background, self._background = self._background, None
        for executor in (pool, background):
            if executor is not None:
                executor.shutdown(wait=True)
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
        classifier = load_classifier(
            settings.backend,
            settings.model_dir,
            threads=settings.threads,
            mirror_average=settings.mirror_average,
        )

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
        return TiledFaceDetector(
            detector, lambda: make_plain_detector(False), settings.tile_above_px, settings.tiles_every_ms
        )

    if shared_detectors:
        pool = DetectorPool(lambda: make_plain_detector(False), size=max(1, settings.threads))

        def pooled_detector() -> FaceDetector:
            # The tiled search remembers where each source's faces were, so it is the source's own;
            # the MediaPipe graphs it calls, for the whole frame and for tiles, are the pool's.
            handle = pool.handle()
            if settings.tile_above_px <= 0:
                return handle
            return TiledFaceDetector(handle, pool.handle, settings.tile_above_px, settings.tiles_every_ms)

        return Engine(pooled_detector, classifier, settings, owned=(pool,))
    return Engine(lambda: make_detector(video), classifier, settings)
