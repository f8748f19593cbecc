"""The real ``Scanner`` for ``POST /scan``: the ``scan`` command's report for an uploaded file.

The report is exactly what ``stream-detector scan`` prints (same engine settings and verdict rule),
with ``path`` set to the uploaded file's name. Beside it goes one annotated picture: the image itself,
or for a video the frame where a face looked most fake. Runs on the server's scan thread only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.engine import Engine, EngineSettings, FrameResult
from stream_detector.pipeline.types import Frame, VerdictState
from stream_detector.webrtc.server import ScanResult

JPEG_QUALITY = 88
# A long upload would hold the one scan thread (and a CPU) for minutes; the report says how much of
# the video was scanned (``frames``, ``duration_s``).
DEFAULT_MAX_SCAN_SECONDS = 120.0


class _WatchedEngine:
    """The scan's engine, seen frame by frame: progress, cancellation, and the frame to show.

    The frame shown is the one where a face looked most fake while judged FAKE; without any FAKE
    verdict, the last frame with faces (its verdicts carry the most evidence); else the first frame.
    """

    def __init__(self, engine: Engine, total_frames: int, progress: Callable[[float], None]) -> None:
        self._engine = engine
        self._total = max(total_frames, 1)
        self._progress = progress
        self._done = 0
        self._best_rank = -1.0
        self._best: tuple[np.ndarray, tuple] | None = None

    def process(self, frame: Frame) -> FrameResult:
        result = self._engine.process(frame)
        self._done += 1
        self._progress(min(self._done / self._total, 1.0))  # raises ScanCancelled on shutdown
        fakes = [verdict.p_smoothed for verdict in result.verdicts if verdict.state == VerdictState.FAKE]
        rank = 1.0 + max(fakes) if fakes else (0.5 if result.verdicts else -0.5)
        # Frames are fresh arrays from the decoder, so keeping a reference (no copy) is safe.
        if self._best is None or rank > self._best_rank or (rank == 0.5 and self._best_rank == 0.5):
            self._best_rank = rank
            self._best = (frame.image, result.verdicts)
        return result

    def annotated(self) -> np.ndarray | None:
        if self._best is None:
            return None
        from stream_detector.pipeline.overlay import draw

        image, verdicts = self._best
        return draw(image, verdicts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def _jpeg(image: np.ndarray | None) -> bytes | None:
    if image is None:
        return None
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return data.tobytes() if ok else None


def _frames_to_scan(path: Path, max_seconds: float | None) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    if max_seconds is not None and fps > 0:
        total = min(total, int(round(max_seconds * fps))) if total else int(round(max_seconds * fps))
    return total


class FileScanner:
    """Scans with ``stream_detector.scan.report``; keeps one video engine between uploads."""

    def __init__(
        self, settings: EngineSettings, max_seconds: float | None = DEFAULT_MAX_SCAN_SECONDS
    ) -> None:
        # Like the scan command: every frame's faces are classified (no live rate limit).
        self._settings = replace(
            settings, classify_hz=0.0, classify_budget_hz=0.0, classify_in_background=False
        )
        self._max_seconds = max_seconds
        self._video_engine: Engine | None = None

    def scan(self, path: Path, name: str, progress: Callable[[float], None]) -> ScanResult:
        from stream_detector.pipeline.sources import is_image_file

        try:
            if is_image_file(path):
                report, picture = self._scan_image(path)
            else:
                report, picture = self._scan_video(path, progress)
        except StreamDetectorError as error:
            # The temporary upload path means nothing to the person who sent the file.
            raise StreamDetectorError(str(error).replace(str(path), name)) from None
        report["path"] = name
        progress(1.0)
        return ScanResult(report=report, annotated_jpeg=_jpeg(picture))

    def _scan_image(self, path: Path) -> tuple[dict[str, Any], np.ndarray | None]:
        from stream_detector.scan.report import scan_image

        with tempfile.TemporaryDirectory(prefix="stream-detector-annotated-") as directory:
            output = Path(directory) / "annotated.png"
            report = scan_image(path, self._settings, output)
            picture = cv2.imread(str(output)) if output.is_file() else None
        report.pop("output", None)
        return report, picture

    def _scan_video(
        self, path: Path, progress: Callable[[float], None]
    ) -> tuple[dict[str, Any], np.ndarray | None]:
        from stream_detector.pipeline.engine import build_engine
        from stream_detector.scan.report import scan_video

        if self._video_engine is None:
            self._video_engine = build_engine(self._settings)
        watched = _WatchedEngine(self._video_engine, _frames_to_scan(path, self._max_seconds), progress)
        report = scan_video(
            path, self._settings, None, max_seconds=self._max_seconds, progress=False, engine=watched
        )
        return report, watched.annotated()

    def close(self) -> None:
        if self._video_engine is not None:
            self._video_engine.close()
            self._video_engine = None


def build_scanner(
    settings: EngineSettings, max_seconds: float | None = DEFAULT_MAX_SCAN_SECONDS
) -> FileScanner:
    return FileScanner(settings, max_seconds)
