"""The one face-crop convention, shared by training, evaluation and the live engine.

A detector box becomes a square of side ``CROP_SCALE`` x its longer side, centred on the box, then
shifted (never padded) to lie inside the image; if the square is larger than the image's shorter side
it shrinks to that side. The square is resized to 224x224 RGB. Shifting instead of padding means the
model never sees synthetic borders, and a tight face crop (the DFDC images) maps onto itself whole.
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 224
# BlazeFace boxes run from the brows to the chin; 1.1x adds a margin of jaw line and forehead.
# The face-swap training faces (DFDC) are tight crops: their side is 1.05x the BlazeFace box (median
# of 677 training files; 1.00-1.19 from the 10th to the 90th percentile). Until 2026-12-07 this was
# 1.5 (the FFHQ-aligned GAN faces' 1.56-1.66x), so the live engine showed the model faces at 0.7x the
# scale it had learned face swaps at; v3's clip ROC-AUC was 0.41 at 1.5 and 0.77 at 1.1 (model card,
# "Framing").
CROP_SCALE = 1.1


def crop_square(box: np.ndarray | tuple[float, ...], image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The crop square (x, y, side) in pixels for a box (x1, y1, x2, y2) in an image of this shape."""
    height, width = image_shape[:2]
    x1, y1, x2, y2 = (float(value) for value in box)
    side = max(x2 - x1, y2 - y1) * CROP_SCALE
    side = int(round(min(max(side, 2.0), height, width)))
    centre_x, centre_y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    x = int(round(min(max(centre_x - side / 2.0, 0.0), width - side)))
    y = int(round(min(max(centre_y - side / 2.0, 0.0), height - side)))
    return x, y, side


def crop_face(
    image_bgr: np.ndarray, box: np.ndarray | tuple[float, ...], size: int = CROP_SIZE
) -> np.ndarray:
    """One (size, size, 3) uint8 RGB crop of a BGR image."""
    x, y, side = crop_square(box, image_bgr.shape)
    region = image_bgr[y : y + side, x : x + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    resized = cv2.resize(region, (size, size), interpolation=interpolation)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def crop_faces(image_bgr: np.ndarray, boxes: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """(N, size, size, 3) uint8 RGB crops for (N, 4) boxes; N may be 0."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([crop_face(image_bgr, box, size) for box in boxes])
