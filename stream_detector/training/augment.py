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

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from stream_detector.pipeline.crops import CROP_SIZE
from stream_detector.training.blending import sharpen
from stream_detector.training.confounds import jpeg_blockiness, laplacian_variance
from stream_detector.training.dataset import jpeg, resize_crop


@dataclass(frozen=True)
class Strength:
    """How hard the codec steps of ``augment`` and ``degraded_view`` hit (the lowest JPEG qualities
    drawn, and how often sensor noise is added), and which steps run at all (``degrades``,
    ``compresses``); the consistency twin (``degraded_view``) is degraded at every strength."""

    jpeg_low: int
    second_jpeg_low: int
    degraded_jpeg_low: int
    noise_probability: float
    # False: no scale, sharpness, colour or noise step, only the mirror flip and (with ``compresses``)
    # the two JPEG passes.
    degrades: bool = True
    compresses: bool = True


# standard: the shipped models' (v1, v2). light: the JPEG floor raised to 60, noise half as often,
# asking whether the heavy codec steps wash out the swap artifacts the clean test faces still carry
# (the training loss stays near the prior's; model card, Experiments).
STRENGTHS = {
    "standard": Strength(jpeg_low=30, second_jpeg_low=40, degraded_jpeg_low=30, noise_probability=0.2),
    "light": Strength(jpeg_low=60, second_jpeg_low=60, degraded_jpeg_low=60, noise_probability=0.1),
    # flip: every view as the file holds it, mirrored half the time: the degradations washed out the
    # swap evidence (model card, Experiments, 2026-12-06). The consistency twin keeps the standard JPEG
    # pass (from 30); even so JPEG-50 flipped 13 % of DFDC's validation reals to FAKE (DFDC's fakes are
    # the blockier class), hence jpeg: the flip and the standard strength's two JPEG passes, nothing else.
    "flip": Strength(
        jpeg_low=60,  # unused: no JPEG pass on the view itself
        second_jpeg_low=60,
        degraded_jpeg_low=30,
        noise_probability=0.0,
        degrades=False,
        compresses=False,
    ),
    "jpeg": Strength(
        jpeg_low=30, second_jpeg_low=40, degraded_jpeg_low=30, noise_probability=0.0, degrades=False
    ),
}


def augment(
    crop_rgb: np.ndarray,
    rng: np.random.Generator,
    size: int = CROP_SIZE,
    strength: Strength = STRENGTHS["standard"],
) -> np.ndarray:
    """One randomly degraded (size, size, 3) uint8 view of a native-resolution RGB face crop."""
    return augment_with_mask(crop_rgb, None, rng, size, strength)[0]


def augment_with_mask(
    crop_rgb: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    size: int = CROP_SIZE,
    strength: Strength = STRENGTHS["standard"],
) -> tuple[np.ndarray, np.ndarray | None]:
    """``augment``'s view, and a float32 (H, W) mask of the crop moved with it: the same window and
    the same flip, so a blend weight still covers the pixels it blended. The mask draws nothing from
    ``rng``: with or without it the image is the same, decision for decision."""
    image = crop_rgb
    if strength.compresses and rng.random() < 0.9:
        image = jpeg(image, int(rng.integers(strength.jpeg_low, 96)))
    if strength.degrades:
        image, mask = _degrade(image, mask, rng, size, strength)
    else:
        image = resize_crop(image, size)  # the mask stays in its own pixels, as after _degrade
    if rng.random() < 0.5:
        image = image[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    if strength.compresses and rng.random() < 0.3:
        image = jpeg(np.ascontiguousarray(image), int(rng.integers(strength.second_jpeg_low, 96)))
    return np.ascontiguousarray(image), (np.ascontiguousarray(mask) if mask is not None else None)


def _degrade(
    image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, size: int, strength: Strength
) -> tuple[np.ndarray, np.ndarray | None]:
    """The steps between ``augment``'s JPEG passes that a ``degrades=False`` strength leaves out:
    scaling, crop jitter (the mask cut with it), the resize to ``size``, sharpness, colour, noise."""
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
        if mask is not None:  # the same window, in the mask's own pixels
            scale = mask.shape[0] / side
            left, top, width = round(dx * scale), round(dy * scale), round((side - cut) * scale)
            mask = mask[top : top + width, left : left + width]
    image = (
        resize_crop(image, size)
        if rng.random() < 0.5
        else cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    )
    sharpness_change = rng.random()
    if sharpness_change < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.4))
    elif sharpness_change < 0.35:
        # Both classes are sharpened as often as blurred: sharpness must say nothing about the label.
        image = sharpen(image, amount=float(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.5:
        image = _colour_jitter(image, rng)
    if rng.random() < strength.noise_probability:
        noise = rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return image, mask


@dataclass(frozen=True)
class Twin:
    """How the consistency twin (``degraded_view``) changes a view's sharpness before its JPEG pass:
    the share of twins blurred, scaled down and up, or sharpened, and the ranges drawn from."""

    blur_probability: float
    blur_sigma: tuple[float, float]
    downup_probability: float
    downup_factor: tuple[float, float]
    sharpen_probability: float = 0.0
    sharpen_amount: tuple[float, float] = (0.5, 1.2)


# standard: the shipped models' twin (v1, v2; 60 % of twins keep their sharpness). sharpness: nearly
# every twin is blurred (up to sigma 2.2), scaled down and up (up to x3.2) or sharpened, the ranges of
# the robustness checks, so the consistency loss ties a face's score to its softer and sharper copies:
# blur and down-up scaling flip 8-63 % of v2's real test faces to FAKE (model card, Robustness).
TWINS = {
    "standard": Twin(
        blur_probability=0.2, blur_sigma=(0.5, 1.5), downup_probability=0.2, downup_factor=(1.5, 3.0)
    ),
    "sharpness": Twin(
        blur_probability=0.35,
        blur_sigma=(0.5, 2.2),
        downup_probability=0.3,
        downup_factor=(1.5, 3.2),
        sharpen_probability=0.25,
    ),
}


def named(table: dict, kind: str, name: str):
    """``table[name]``, or a ValueError naming the unknown choice and the known ones (train.py's
    --augmentation and --twin offer the same tables as argparse choices)."""
    if name not in table:
        raise ValueError(f"{kind} {name!r} is not one of {', '.join(table)}")
    return table[name]


def degraded_view(
    image: np.ndarray,
    rng: np.random.Generator,
    strength: Strength = STRENGTHS["standard"],
    twin: Twin = TWINS["standard"],
) -> np.ndarray:
    """The same view after one more JPEG pass, as a re-encoding stream gives it, sometimes blurred,
    scaled down and up, or sharpened first (a softer camera, a farther face, a sharpening encoder).
    Its score should not move (the consistency pair in training.loop.AugmentedBatches)."""
    image = np.ascontiguousarray(image)
    change = rng.random()
    if change < twin.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*twin.blur_sigma))
    elif change < twin.blur_probability + twin.downup_probability:
        side = image.shape[0]
        small = max(16, int(side / rng.uniform(*twin.downup_factor)))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (side, side))
    elif change < twin.blur_probability + twin.downup_probability + twin.sharpen_probability:
        image = sharpen(image, amount=float(rng.uniform(*twin.sharpen_amount)))
    return jpeg(image, int(rng.integers(strength.degraded_jpeg_low, 91)))


def match_sharpness(crops: list[np.ndarray], labels: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Blur the sharper class so both classes of one source share a sharpness distribution.

    Quantile matching: the image at quantile q of the sharper class is blurred (Gaussian, sigma found
    by bisection) down to the Laplacian variance of quantile q of the other class, where it is above
    it. Sharpness then says nothing about the label in training (ffhq-tpdne: reals 934 vs fakes 513;
    DFDC 68 vs 48), and the model has to find the manipulation. Returns the crops and how many changed.
    """

    def blur_to(crop: np.ndarray, value: float, target: float) -> np.ndarray | None:
        low, high = 0.0, 3.0
        for _ in range(10):
            sigma = (low + high) / 2.0
            if laplacian_variance(cv2.GaussianBlur(crop, (0, 0), sigma)) > target:
                low = sigma
            else:
                high = sigma
        return cv2.GaussianBlur(crop, (0, 0), high) if high > 0.05 else None

    return _match_quantiles(crops, labels, laplacian_variance, blur_to, lower_the_higher_class=True)


# Highest first: the first quality whose blockiness reaches the target ends the search.
MATCHING_QUALITIES = tuple(range(95, 19, -5))


def match_blockiness(crops: list[np.ndarray], labels: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Re-compress the less blocky class so both classes of one source share a blockiness distribution.

    Quantile matching, as ``match_sharpness`` does for blur: the image at quantile q of the less blocky
    class is JPEG-compressed, at the quality (``MATCHING_QUALITIES``) whose blockiness lands closest to
    quantile q of the other class, where it is below it. In DFDC the fakes are the blockier class
    (median 1.34 vs 1.32, statistic AUC 0.58) and undegraded training let the network learn "blocky
    = fake": JPEG-50 turned 9-13 % of validation reals FAKE (model card, "Training views left
    undegraded"). A face whose crop lines up with its file's 8-pixel grid is not monotone in quality
    (a re-compression on the same grid can smooth the old steps), so every quality is measured, not
    bisected. Returns the crops and how many changed.
    """

    def compress_to(crop: np.ndarray, value: float, target: float) -> np.ndarray | None:
        best, best_gap = None, target - value
        for quality in MATCHING_QUALITIES:
            candidate = jpeg(crop, quality)
            candidate_value = jpeg_blockiness(candidate)
            if abs(candidate_value - target) < best_gap:
                best, best_gap = candidate, abs(candidate_value - target)
            if candidate_value >= target:
                break
        return best

    return _match_quantiles(crops, labels, jpeg_blockiness, compress_to, lower_the_higher_class=False)


def _match_quantiles(
    crops: list[np.ndarray],
    labels: np.ndarray,
    measure: Callable[[np.ndarray], float],
    move_to: Callable[[np.ndarray, float, float], np.ndarray | None],
    lower_the_higher_class: bool,
) -> tuple[list[np.ndarray], int]:
    """The quantile matching both matchers share: ``measure`` every crop; the class with the higher
    median (``lower_the_higher_class``) or the lower one moves; its image at quantile q, where it is
    past quantile q of the other class, becomes ``move_to(crop, value, target)`` (None: unchanged)."""
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        return list(crops), 0
    values = np.array([measure(crop) for crop in crops])
    higher = int(np.median(values[labels == 1]) > np.median(values[labels == 0]))
    moving = higher if lower_the_higher_class else 1 - higher
    target_values = np.sort(values[labels != moving])
    indices = np.flatnonzero(labels == moving)
    order = indices[np.argsort(values[indices], kind="mergesort")]
    matched, changed = list(crops), 0
    for rank, index in enumerate(order):
        target = float(np.quantile(target_values, (rank + 0.5) / len(order)))
        already_there = values[index] <= target if lower_the_higher_class else values[index] >= target
        if already_there:
            continue
        moved = move_to(crops[index], float(values[index]), target)
        if moved is not None:
            matched[index] = moved
            changed += 1
    return matched, changed


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    brightness = rng.uniform(-20, 20)
    contrast = rng.uniform(0.8, 1.2)
    saturation = rng.uniform(0.7, 1.3)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + (pixels - grey) * saturation
    pixels = (pixels - 128.0) * contrast + 128.0 + brightness
    return np.clip(pixels, 0, 255).astype(np.uint8)
