"""Face detection with MediaPipe Tasks (BlazeFace), in VIDEO mode for streams and IMAGE mode for stills.

The models come from the mediapipe 0.10.21 wheel and are put in ``model/face_detector`` by
``scripts/setup.sh``; they are checked against pinned SHA-256 sums before use.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from stream_detector.errors import ModelError
from stream_detector.pipeline.types import FaceDetector, Faces, Frame

DETECTOR_FILES = {
    "full": "face_detection_full_range_sparse.tflite",
    "short": "face_detection_short_range.tflite",
}
DetectorRange = Literal["full", "short"]
# SHA-256 of every face model, one line each: scripts/setup.sh checks the same file.
CHECKSUM_FILE = Path(__file__).resolve().parent / "face_models.sha256"


def face_model_checksums() -> dict[str, str]:
    """file name -> SHA-256 from model/face_models.sha256."""
    lines = CHECKSUM_FILE.read_text().splitlines()
    return {line.split()[1]: line.split()[0] for line in lines if line.strip()}


def detector_model_dir() -> Path:
    configured = os.environ.get("STREAM_DETECTOR_FACE_MODELS")
    if configured:
        return Path(configured)
    # Beside the classifier's files (model.model_search_path), in face_detector/.
    from stream_detector.pipeline.model import model_search_path

    searched = [folder / "face_detector" for folder in model_search_path()]
    return next((folder for folder in searched if folder.is_dir()), searched[0])


def face_model_path(name: str) -> Path:
    """The verified path of one face model file, or a ModelError that says how to provision it."""
    path = detector_model_dir() / name
    if not path.is_file():
        raise ModelError(f"face model missing: {path} (run scripts/setup.sh to provision it)")
    if hashlib.sha256(path.read_bytes()).hexdigest() != face_model_checksums()[name]:
        raise ModelError(f"face model corrupt (checksum mismatch): {path} (rerun scripts/setup.sh)")
    return path


def detector_model_path(model_range: DetectorRange) -> Path:
    """The verified path of a BlazeFace model, or a ModelError that says how to provision it."""
    if model_range not in DETECTOR_FILES:
        raise ModelError(f"face detector range must be 'full' or 'short', not {model_range!r}")
    return face_model_path(DETECTOR_FILES[model_range])


def _import_mediapipe_without_tensorflow() -> None:
    """Import MediaPipe Tasks without letting it load TensorFlow.

    mediapipe.tasks imports ``tensorflow.tools.docs`` when TensorFlow is installed, only for its API
    documentation, and falls back to a no-op when it is not. The LiteRT runtime needs no TensorFlow
    (hundreds of MB and seconds of start-up), so the import is made to take the fallback; TensorFlow
    itself stays importable afterwards for the Keras backend and training.
    """
    import sys

    if "mediapipe.tasks.python" in sys.modules or "tensorflow" in sys.modules:
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes the import raise ModuleNotFoundError
    try:
        import mediapipe.tasks.python  # noqa: F401
    finally:
        del sys.modules["tensorflow"]


class MediaPipeFaceDetector:
    """FaceDetector on MediaPipe Tasks. ``video=True`` tracks across frames and needs rising timestamps."""

    def __init__(
        self,
        model_range: DetectorRange = "full",
        min_confidence: float = 0.5,
        min_face_size: int = 24,
        video: bool = True,
    ) -> None:
        _import_mediapipe_without_tensorflow()
        from mediapipe.tasks.python import BaseOptions, vision

        path = detector_model_path(model_range)
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            min_detection_confidence=min_confidence,
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self._video = video
        self._min_face_size = min_face_size
        self._last_timestamp = -1
        self._lock = threading.Lock()
        self.model_range = model_range

    def detect(self, frame: Frame) -> Faces:
        import mediapipe as mp

        rgb = cv2.cvtColor(frame.image, cv2.COLOR_BGR2RGB)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with self._lock:
            if self._video:
                # MediaPipe refuses timestamps that do not strictly increase (e.g. a file looping).
                timestamp = max(int(frame.timestamp_ms), self._last_timestamp + 1)
                self._last_timestamp = timestamp
                result = self._detector.detect_for_video(image, timestamp)
            else:
                result = self._detector.detect(image)
        height, width = frame.image.shape[:2]
        boxes, scores = [], []
        for detection in result.detections:
            box = detection.bounding_box
            x1 = max(0.0, float(box.origin_x))
            y1 = max(0.0, float(box.origin_y))
            x2 = min(float(width), float(box.origin_x + box.width))
            y2 = min(float(height), float(box.origin_y + box.height))
            if min(x2 - x1, y2 - y1) < self._min_face_size:
                continue
            boxes.append((x1, y1, x2, y2))
            scores.append(detection.categories[0].score if detection.categories else 0.0)
        if not boxes:
            return Faces.empty()
        return Faces(np.array(boxes, np.float32), np.array(scores, np.float32))

    def close(self) -> None:
        with self._lock:
            if self._detector is not None:
                self._detector.close()
                self._detector = None

    def __enter__(self) -> MediaPipeFaceDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DetectorPool:
    """A few detectors shared by any number of sources, ``size`` of them at most, made on first need.

    BlazeFace keeps no state between frames, so any detector can serve any source (IMAGE mode: no
    per-source timestamp line). Eight cameras then cost two MediaPipe graphs and their threads, not
    eight: measured at 8 cameras, less memory and less CPU per frame (README, daemon section). Two
    detectors let two frames be detected at once (each runs on its own thread, without the GIL).
    """

    def __init__(self, factory: Callable[[], FaceDetector], size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"a detector pool needs at least one detector, not {size}")
        self._factory = factory
        self._size = size
        self._idle: queue.LifoQueue[FaceDetector] = queue.LifoQueue()
        self._made: list[FaceDetector] = []
        self._lock = threading.Lock()
        self._closed = False

    def detect(self, frame: Frame) -> Faces:
        detector = self._borrow()
        try:
            return detector.detect(frame)
        finally:
            self._idle.put(detector)

    def _borrow(self) -> FaceDetector:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("detector pool is closed")
            if len(self._made) < self._size:
                self._made.append(self._factory())
                return self._made[-1]
        return self._idle.get()

    def handle(self) -> PooledDetector:
        """A source's view of the pool: closing it leaves the pool to its other sources. The first
        handle makes the first detector (seconds), so ``Engine.prepare`` still warms MediaPipe up."""
        with self._lock:
            if not self._made and not self._closed:
                self._made.append(self._factory())
                self._idle.put(self._made[-1])
        return PooledDetector(self)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            made, self._made = self._made, []
        for detector in made:
            close = getattr(detector, "close", None)
            if callable(close):
                close()


class PooledDetector:
    """One source's FaceDetector on a shared DetectorPool."""

    def __init__(self, pool: DetectorPool) -> None:
        self._pool = pool

    def detect(self, frame: Frame) -> Faces:
        return self._pool.detect(frame)

    def close(self) -> None:
        """Nothing of the source's own to release; the pool closes with its engine."""


def tile_windows(
    width: int, height: int, tile_above_px: int, overlap: float = 0.2
) -> list[tuple[int, int, int, int]]:
    """The overlapping windows (x1, y1, x2, y2) a large frame is also searched in: a 2x2 grid, 3x3
    from twice ``tile_above_px``; none for a frame no wider than ``tile_above_px``."""
    if tile_above_px <= 0 or width <= tile_above_px:
        return []
    side = 3 if width > 2 * tile_above_px else 2
    tile_width, tile_height = width / side, height / side
    pad_x, pad_y = overlap * tile_width, overlap * tile_height
    windows = []
    for row in range(side):
        for column in range(side):
            x1 = max(0, int(column * tile_width - pad_x))
            y1 = max(0, int(row * tile_height - pad_y))
            x2 = min(width, int((column + 1) * tile_width + pad_x))
            y2 = min(height, int((row + 1) * tile_height + pad_y))
            windows.append((x1, y1, x2, y2))
    return windows


def merge_detections(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4) -> Faces:
    """Non-maximum suppression: of boxes that overlap by more than ``iou_threshold`` (or one holding
    most of the other: a face cut by a tile edge), the best-scored stays."""
    if len(boxes) == 0:
        return Faces.empty()
    order = np.argsort(-scores)
    kept: list[int] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in order:
        box = boxes[index]
        duplicate = False
        for other in kept:
            ix1, iy1 = max(box[0], boxes[other][0]), max(box[1], boxes[other][1])
            ix2, iy2 = min(box[2], boxes[other][2]), min(box[3], boxes[other][3])
            inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
            union = areas[index] + areas[other] - inter
            if union > 0 and (inter / union > iou_threshold or inter > 0.7 * min(areas[index], areas[other])):
                duplicate = True
                break
        if not duplicate:
            kept.append(int(index))
    kept.sort()
    return Faces(boxes[kept], scores[kept])


def search_window(box: np.ndarray, width: int, height: int, factor: float = 3.0) -> tuple[int, int, int, int]:
    """The window (x1, y1, x2, y2) a face found before is looked for in again: ``factor`` times its
    side, centred on it and clipped to the frame, so the face is large in the detector's input."""
    x1, y1, x2, y2 = (float(value) for value in box)
    half = 0.5 * factor * max(x2 - x1, y2 - y1)
    centre_x, centre_y = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
    return (
        max(0, int(centre_x - half)),
        max(0, int(centre_y - half)),
        min(width, int(centre_x + half)),
        min(height, int(centre_y + half)),
    )


def _overlaps(box: np.ndarray, others: np.ndarray) -> bool:
    """Whether ``box`` and any of ``others`` share at least a third of the smaller one's area."""
    if len(others) == 0:
        return False
    ix1 = np.maximum(box[0], others[:, 0])
    iy1 = np.maximum(box[1], others[:, 1])
    ix2 = np.minimum(box[2], others[:, 2])
    iy2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    other_areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return bool(np.any(inter >= np.minimum(area, other_areas) / 3.0))


class TiledFaceDetector:
    """A FaceDetector that also searches large frames tile by tile, one per source.

    BlazeFace sees the whole frame at 128-192 px: in a shared 1080p call gallery a tile's face is then
    ~15 px and often missed (one of four in a plain 2x2 grid). Frames wider than ``tile_above_px`` are
    searched whole and in overlapping windows (tile_windows), each window by an IMAGE-mode detector, and
    the boxes merged (merge_detections). Smaller frames go to ``inner`` alone, unchanged.

    The tiled search runs once every ``tiles_every_ms`` of the source's time (a call's participants
    come and go in seconds, not frames). In between, every face the last search found that the whole
    frame misses is looked for again in a window around where it was last (search_window): one small
    detector call per missed face instead of a pass over every tile. Where that would take more calls
    than the tiles, the tiles are searched instead. A face neither finds is dropped until the next tiled
    search (the tracker bridges the gap).
    """

    def __init__(
        self,
        inner,
        tile_detector_factory: Callable[[], FaceDetector],
        tile_above_px: int,
        tiles_every_ms: float = 1000.0,
    ) -> None:
        self._inner = inner
        self._tile_factory = tile_detector_factory
        self._tiles: FaceDetector | None = None  # made on the first large frame: 720p never pays for it
        self.tile_above_px = tile_above_px
        self.tiles_every_ms = tiles_every_ms
        self._last_tiled_ms: float | None = None
        self._known = np.zeros((0, 4), np.float32)  # every face of the last search, where last seen
        self.tiled_searches = 0
        self.window_searches = 0

    def _detect_in(self, frame: Frame, window: tuple[int, int, int, int]) -> Faces:
        if self._tiles is None:
            self._tiles = self._tile_factory()
        x1, y1, x2, y2 = window
        part = Frame(
            np.ascontiguousarray(frame.image[y1:y2, x1:x2]), frame.index, frame.timestamp_ms, frame.source_id
        )
        found = self._tiles.detect(part)
        if not len(found):
            return found
        return Faces(found.boxes + np.array([x1, y1, x1, y1], np.float32), found.scores)

    def detect(self, frame: Frame) -> Faces:
        whole = self._inner.detect(frame)
        height, width = frame.image.shape[:2]
        windows = tile_windows(width, height, self.tile_above_px)
        if not windows:
            return whole
        missed = [box for box in self._known if not _overlaps(box, whole.boxes)]
        due = (
            self._last_tiled_ms is None
            or frame.timestamp_ms - self._last_tiled_ms >= self.tiles_every_ms
            or frame.timestamp_ms < self._last_tiled_ms  # a source whose clock restarted
            or len(missed) > len(windows)
        )
        boxes, scores = [whole.boxes], [whole.scores]
        if due:
            self._last_tiled_ms = frame.timestamp_ms
            self.tiled_searches += 1
            for window in windows:
                found = self._detect_in(frame, window)
                boxes.append(found.boxes)
                scores.append(found.scores)
        else:
            for box in missed:
                self.window_searches += 1
                found = self._detect_in(frame, search_window(box, width, height))
                # Only the face looked for: another one at the window's edge is the tiles' to find.
                keep = [index for index, other in enumerate(found.boxes) if _overlaps(other, box[None])]
                boxes.append(found.boxes[keep])
                scores.append(found.scores[keep])
        merged = merge_detections(np.concatenate(boxes), np.concatenate(scores))
        self._known = merged.boxes.copy()
        return merged

    def close(self) -> None:
        for detector in (self._inner, self._tiles):
            close = getattr(detector, "close", None)
            if callable(close):
                close()
