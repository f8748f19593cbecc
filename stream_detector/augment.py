"""Training augmentation, identical for both classes, shaped like a camera and codec pipeline.

The shortcut it removes: in ffhq-tpdne every real face is a lossless PNG and every fake is JPEG-75.
Re-compressing every image of either class at a random quality, at native resolution and again at
the model's resolution, makes "was this JPEG?" carry less information about the label, but not none:
only the fakes ever carry two compressions, and only the reals are ever clean. The shipped model
(resize mode) flips 5 % of real faces to fake at JPEG q50 all the same; a stronger one trained on
224 px windows (patch mode, 26 epochs) learned the rest of the cue and flipped 31 %.
``lossless=True`` (``train.py --equalise-compression``) first gives a lossless image the compression
history of the JPEG class (quality 70-80, native resolution): in patch mode that brought the flips
at q50 down to 10 % (model card, "Experiments").
"""

from __future__ import annotations

import cv2
import numpy as np

from stream_detector.crops import CROP_SIZE
from stream_detector.dataset import jpeg, resize_crop


def augment(
    crop_rgb: np.ndarray, rng: np.random.Generator, size: int = CROP_SIZE, lossless: bool = False
) -> np.ndarray:
    """One randomly degraded (size, size, 3) uint8 view of a native-resolution RGB face crop.
    ``lossless``: the crop comes from a PNG-like file (module docstring)."""
    image = jpeg(crop_rgb, int(rng.integers(70, 81))) if lossless else crop_rgb
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


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    brightness = rng.uniform(-20, 20)
    contrast = rng.uniform(0.8, 1.2)
    saturation = rng.uniform(0.7, 1.3)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * saturation
    pixels = (pixels - 128.0) * contrast + 128.0 + brightness
    return np.clip(pixels, 0, 255).astype(np.uint8)
