"""Face landmarks for self-blended training images: MediaPipe FaceMesh run with LiteRT, cached per set.

The model is ``face_landmark.tflite`` from the same mediapipe 0.10.21 wheel as the BlazeFace detectors
(scripts/setup.sh extracts it, model/face_models.sha256 pins it). Input 1x192x192x3 float in [0, 1];
outputs 468 (x, y, z) landmarks in input pixels and a face-presence logit.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import cv2
import numpy as np

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.faces import face_model_path
from stream_detector.training.dataset import write_pickle

LANDMARK_MODEL_FILE = "face_landmark.tflite"
LANDMARK_INPUT = 192
LANDMARK_COUNT = 468
# Bump when the landmark policy changes, so cached landmarks are rebuilt.
LANDMARK_CACHE_VERSION = 1


class FaceMeshLandmarker:
    """468 face landmarks (x, y) in the pixels of a face crop, or None where FaceMesh sees no face."""

    def __init__(self, min_presence: float = 0.5, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(
            model_path=str(face_model_path(LANDMARK_MODEL_FILE)), num_threads=threads
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = self._interpreter.get_output_details()
        self._points = next(o["index"] for o in outputs if int(np.prod(o["shape"])) == LANDMARK_COUNT * 3)
        self._presence = next(o["index"] for o in outputs if int(np.prod(o["shape"])) == 1)
        # The model's presence output is a logit.
        self._min_logit = float(np.log(min_presence / (1.0 - min_presence)))

    def landmarks(self, crop_rgb: np.ndarray) -> np.ndarray | None:
        height, width = crop_rgb.shape[:2]
        resized = cv2.resize(crop_rgb, (LANDMARK_INPUT, LANDMARK_INPUT), interpolation=cv2.INTER_AREA)
        self._interpreter.set_tensor(self._input, (resized.astype(np.float32) / 255.0)[None])
        self._interpreter.invoke()
        if float(self._interpreter.get_tensor(self._presence).reshape(-1)[0]) < self._min_logit:
            return None
        points = self._interpreter.get_tensor(self._points).reshape(LANDMARK_COUNT, 3)[:, :2].copy()
        points[:, 0] *= width / LANDMARK_INPUT
        points[:, 1] *= height / LANDMARK_INPUT
        return points.astype(np.float32)


def landmarks_for_crops(
    crops: list[np.ndarray], files: list[str], cache_dir: Path | None = None, name: str = "faces"
) -> list[np.ndarray | None]:
    """Landmarks of every crop (None where none were found), computed once and cached by content."""
    digest = hashlib.sha256(repr((LANDMARK_CACHE_VERSION, files)).encode())
    for crop in crops:
        digest.update(np.ascontiguousarray(crop[::7, ::7]).tobytes())
    cache_path = Path(cache_dir) / f"landmarks-{name}-{digest.hexdigest()[:16]}.pkl" if cache_dir else None
    if cache_path and cache_path.is_file():
        with cache_path.open("rb") as handle:
            return pickle.load(handle)
    landmarker = FaceMeshLandmarker()
    found = [landmarker.landmarks(crop) for crop in crops]
    if crops and not any(points is not None for points in found):
        raise StreamDetectorError(f"{name}: FaceMesh found no face landmarks in any of {len(crops)} crops")
    if cache_path:
        write_pickle(cache_path, found)
    return found
