"""Data passed between pipeline stages, and the one-verb interfaces of those stages.

Conventions, checked once where the data is made:
- frames are OpenCV BGR uint8 (H, W, 3); face crops handed to a classifier are RGB uint8 (N, 224, 224, 3);
- boxes are float32 (N, 4) as x1, y1, x2, y2 in frame pixels;
- timestamps are milliseconds on one monotonic clock (``time.monotonic() * 1000`` for live sources,
  media time for files), passed as arguments so pure stages can be tested with sequences.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int
    timestamp_ms: float
    source_id: str = "0"

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f"Frame.image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )


@dataclass(frozen=True)
class Faces:
    boxes: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"Faces: {len(boxes)} boxes but {len(scores)} scores")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return len(self.boxes)

    @staticmethod
    def empty() -> Faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


class VerdictState(enum.StrEnum):
    REAL = "REAL"
    FAKE = "FAKE"
    UNCERTAIN = "UNCERTAIN"


@dataclass(frozen=True)
class TrackedFace:
    """A face with an id that is stable across frames; p_fake is None when not classified this frame."""

    id: int
    box: tuple[float, float, float, float]
    p_fake: float | None = None
    detection_score: float = 1.0


@dataclass(frozen=True)
class Verdict:
    id: int
    box: tuple[float, float, float, float]
    state: VerdictState
    p_smoothed: float
    since_ms: float
    evidence: int = 0
    first_verdict_ms: float | None = None


@dataclass(frozen=True)
class Stats:
    """Figures shown in the overlay's HUD and reported by health endpoints."""

    fps: float = 0.0
    latency_ms: float = 0.0
    dropped_frames: int = 0
    backend: str = ""
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """A FAKE incident on one face track of one source: opened, updated, closed."""

    kind: str  # "start" | "update" | "end"
    event_id: str
    source_id: str
    track_id: int
    timestamp_ms: float
    # The track's smoothed evidence (Verdict.p_smoothed), now and at its highest in this incident.
    p_smoothed: float
    max_p_smoothed: float
    duration_ms: float
    snapshot: str | None = None


@runtime_checkable
class FrameSource(Protocol):
    def read(self) -> Frame | None:
        """The next (newest) frame, or None at a clean end of the source."""

    def close(self) -> None: ...


@runtime_checkable
class FaceDetector(Protocol):
    def detect(self, frame: Frame) -> Faces: ...


@runtime_checkable
class Classifier(Protocol):
    """Crops in, calibrated p(fake) out. A remote batched service can implement this too."""

    name: str

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """(N, 224, 224, 3) uint8 RGB -> (N,) float32 p(fake); N may be 0. NaN for a crop that could not
        be scored (a remote service that timed out): the engine leaves that face's verdict as it was."""
