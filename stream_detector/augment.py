"""Training augmentation, identical for both classes, shaped like a camera and codec pipeline.

The shortcut it works against: in ffhq-tpdne every real face is a lossless PNG and every fake is
JPEG-75. Two measures, both needed (model card, "Training recipe"):
- the lossless files get the fakes' exact JPEG history before the face is cut
  (``dataset.load_face_set(equalise_quality=75)``), so no compression difference is left to learn;
- every view of either class is then re-compressed, resized, blurred and jittered alike here, and
  ``degraded_view`` makes the second view of a consistency pair: the model is trained to give a
  face and its further-compressed copy the same score, which is what a live product needs.
"""

from __future__ import annotations

import cv2
import numpy as np

from stream_detector.crops import CROP_SIZE
from stream_detector.dataset import jpeg, resize_crop


def augment(crop_rgb: np.ndarray, rng: np.random.Generator, size: int = CROP_SIZE) -> np.ndarray:
    """One randomly degraded (size, size, 3) uint8 view of a native-resolution RGB face crop."""
    image = crop_rgb
    if rng.random() < 0.9:
        image = jpeg(image, int(rng.integers(30, 96)))
    if rng.random() < 0.2:
        # A face seen from further away: lose resolution, then come back up.
        factor = rng.uniform(0.35, 0.9)
        small = max(16, int(image.shape[0] * factor))
        image = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.15:
        # Small crop jitter: the live detector's box wanders by a few percent.
        side = image.shape[0]
        cut = int(side * rng.uniform(0.0, 0.08))
        dx, dy = rng.integers(0, cut + 1, 2)
        image = image[dy : side - cut + dy, dx : side - cut + dx]
    image = (
        resize_crop(image, size)
        if rng.random() < 0.5
        else cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    )
    if rng.random() < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.4))
    if rng.random() < 0.5:
        image = _colour_jitter(image, rng)
    if rng.random() < 0.2:
        noise = rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.3:
        image = jpeg(np.ascontiguousarray(image), int(rng.integers(40, 96)))
    return np.ascontiguousarray(image)


def degraded_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same view after one more JPEG pass, as a re-encoding stream gives it. Its score should not
    move (the consistency pair in training.AugmentedBatches)."""
    return jpeg(np.ascontiguousarray(image), int(rng.integers(30, 91)))


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    brightness = rng.uniform(-20, 20)
    contrast = rng.uniform(0.8, 1.2)
    saturation = rng.uniform(0.7, 1.3)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * saturation
    pixels = (pixels - 128.0) * contrast + 128.0 + brightness
    return np.clip(pixels, 0, 255).astype(np.uint8)
