"""Face tracking: detections of one source -> faces with ids that stay stable across frames.

``Tracker.update(faces, timestamp_ms, appearances)`` is pure: the clock is an argument, so any
sequence of frames can be replayed in a test.

How a detection finds its track, in order:
1. Motion: every track seen in the last ``max_missing_ms`` predicts its box at this timestamp with a
   constant-velocity model; detections and predictions are paired greedily by IoU. Prediction is what
   keeps ids apart when two faces cross (the nearest *last* box is the other face half of the time).
2. Appearance: a detection left over is compared with tracks lost for up to ``reidentify_ms`` (a face
   that left the frame or was hidden) by a small colour thumbnail; a close enough match takes the old
   id back, so a person who steps out and back keeps their evidence.
3. Otherwise it starts a new track with the next id. Ids are never reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from stream_detector.pipeline.types import Faces, TrackedFace
from stream_detector.settings import setting

APPEARANCE_SIZE = 16


@dataclass(frozen=True)
class TrackerSettings:
    max_missing_ms: float = setting(
        500.0,
        "a track keeps matching by motion this long after its last detection",
        minimum=0.0,
        maximum=60000.0,
    )
    reidentify_ms: float = setting(
        5000.0,
        "a lost track can be re-identified by appearance this long, then is forgotten",
        minimum=0.0,
        maximum=600000.0,
    )
    min_iou: float = setting(
        0.15, "box overlap a detection needs to continue a track", minimum=0.0, maximum=1.0
    )
    max_centre_distance: float = setting(
        0.6,
        "centre distance (fraction of the track's size) that still matches at low IoU",
        minimum=0.0,
        maximum=10.0,
    )
    min_appearance_similarity: float = setting(
        0.6, "thumbnail similarity a re-identification needs", minimum=0.0, maximum=1.0
    )
    max_prediction_ms: float = setting(
        300.0, "velocity is extrapolated at most this far", minimum=0.0, maximum=60000.0
    )


@dataclass
class _Track:
    id: int
    box: np.ndarray
    first_seen_ms: float
    last_seen_ms: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float64))
    appearance: np.ndarray | None = None
    hits: int = 1

    def predict(self, timestamp_ms: float, max_prediction_ms: float) -> np.ndarray:
        elapsed = min(max(timestamp_ms - self.last_seen_ms, 0.0), max_prediction_ms)
        return self.box + self.velocity * elapsed


def appearance_descriptor(image_bgr: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """A unit-norm, zero-mean 16x16 colour thumbnail of the box: cheap, and enough to tell faces apart
    for the seconds a track waits to be re-identified."""
    height, width = image_bgr.shape[:2]
    x1, y1, x2, y2 = (int(round(value)) for value in box)
    x1, y1 = max(0, min(x1, width - 1)), max(0, min(y1, height - 1))
    x2, y2 = max(x1 + 1, min(x2, width)), max(y1 + 1, min(y2, height))
    thumbnail = cv2.resize(
        image_bgr[y1:y2, x1:x2], (APPEARANCE_SIZE, APPEARANCE_SIZE), interpolation=cv2.INTER_AREA
    )
    vector = thumbnail.astype(np.float32).reshape(-1)
    vector -= vector.mean()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else vector


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return float(intersection / union) if union > 0 else 0.0


def _match_score(predicted: np.ndarray, detected: np.ndarray, settings: TrackerSettings) -> float:
    """IoU when the boxes overlap enough; otherwise a small score that falls with centre distance."""
    iou = box_iou(predicted, detected)
    if iou >= settings.min_iou:
        return iou
    size = max(float(np.mean([predicted[2] - predicted[0], predicted[3] - predicted[1]])), 1.0)
    centre_predicted = (predicted[:2] + predicted[2:]) / 2.0
    centre_detected = (detected[:2] + detected[2:]) / 2.0
    distance = float(np.linalg.norm(centre_predicted - centre_detected)) / size
    if distance >= settings.max_centre_distance:
        return 0.0
    return settings.min_iou * (1.0 - distance / settings.max_centre_distance) * 0.99


class Tracker:
    """Stable face ids for one source. Not thread-safe: one tracker per source, fed in time order."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1

    def update(
        self,
        faces: Faces,
        timestamp_ms: float,
        appearances: Sequence[np.ndarray] | np.ndarray | None = None,
    ) -> tuple[TrackedFace, ...]:
        """Tracked faces in the order of ``faces`` (p_fake is None: classifying is not the tracker's job)."""
        settings = self.settings
        boxes = np.asarray(faces.boxes, np.float64).reshape(-1, 4)
        assigned: list[int | None] = [None] * len(boxes)

        # 1. Motion: recent tracks against detections, best IoU first.
        recent = [
            track
            for track in self._tracks.values()
            if timestamp_ms - track.last_seen_ms <= settings.max_missing_ms
        ]
        candidates = []
        for track in recent:
            predicted = track.predict(timestamp_ms, settings.max_prediction_ms)
            for index, box in enumerate(boxes):
                score = _match_score(predicted, box, settings)
                if score > 0.0:
                    candidates.append((score, track.id, index))
        used_tracks: set[int] = set()
        for _score, track_id, index in sorted(candidates, key=lambda item: -item[0]):
            if track_id in used_tracks or assigned[index] is not None:
                continue
            used_tracks.add(track_id)
            assigned[index] = track_id

        # 2. Appearance: leftover detections against tracks not matched by motion.
        if appearances is not None:
            lost = [
                track
                for track in self._tracks.values()
                if track.id not in used_tracks and track.appearance is not None
            ]
            candidates = []
            for track in lost:
                for index in range(len(boxes)):
                    if assigned[index] is None:
                        similarity = float(np.dot(track.appearance, appearances[index]))
                        if similarity >= settings.min_appearance_similarity:
                            candidates.append((similarity, track.id, index))
            for _score, track_id, index in sorted(candidates, key=lambda item: -item[0]):
                if track_id in used_tracks or assigned[index] is not None:
                    continue
                used_tracks.add(track_id)
                assigned[index] = track_id

        # 3. New tracks, then update everything that matched.
        result = []
        for index, box in enumerate(boxes):
            appearance = None if appearances is None else np.asarray(appearances[index], np.float32)
            track_id = assigned[index]
            if track_id is None:
                track_id = self._next_id
                self._next_id += 1
                self._tracks[track_id] = _Track(
                    track_id, box.copy(), timestamp_ms, timestamp_ms, appearance=appearance
                )
            else:
                self._update_track(self._tracks[track_id], box, timestamp_ms, appearance)
            result.append(
                TrackedFace(
                    id=track_id,
                    box=tuple(float(value) for value in box),
                    detection_score=float(faces.scores[index]),
                )
            )

        self._tracks = {
            track_id: track
            for track_id, track in self._tracks.items()
            if timestamp_ms - track.last_seen_ms <= settings.reidentify_ms
        }
        return tuple(result)

    def _update_track(
        self, track: _Track, box: np.ndarray, timestamp_ms: float, appearance: np.ndarray | None
    ) -> None:
        elapsed = timestamp_ms - track.last_seen_ms
        if elapsed > 0 and elapsed <= self.settings.max_missing_ms:
            # Smoothed so that detector jitter does not turn into runaway predictions.
            measured = (box - track.box) / elapsed
            track.velocity = 0.5 * track.velocity + 0.5 * measured if track.hits > 1 else measured
        else:
            # Re-identified after a gap: the old velocity says nothing about the new position.
            track.velocity = np.zeros(4, np.float64)
        track.box = box.copy()
        track.last_seen_ms = timestamp_ms
        track.hits += 1
        if appearance is not None:
            if track.appearance is None:
                track.appearance = appearance
            else:
                blended = 0.8 * track.appearance + 0.2 * appearance
                norm = float(np.linalg.norm(blended))
                track.appearance = blended / norm if norm > 1e-6 else blended

    def live_ids(self) -> set[int]:
        """Ids still remembered (seen within ``reidentify_ms``); state kept for other ids can go."""
        return set(self._tracks)

    def first_seen_ms(self, track_id: int) -> float | None:
        track = self._tracks.get(track_id)
        return None if track is None else track.first_seen_ms
