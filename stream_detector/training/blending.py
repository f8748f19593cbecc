"""Self-blended images (SBI): pseudo-fakes that carry only blending evidence.

Each pseudo-fake is a real face blended with a transformed copy of itself (after Shiohara & Yamasaki,
"Detecting Deepfakes with Self-Blended Images", CVPR 2022; written here from the paper's description).
Identity, scene, camera, compression and sharpness are the same on both sides of a real/blend pair, so
the only thing left to learn is what a face swap leaves: a blending boundary and a colour / sharpness
mismatch between the inner face and its surroundings.

The blend is made on the native crop (the square of the one crop convention, pipeline/crops.py, or the
whole tight crop), so the mask's boundary lies inside the picture the model sees; both views then go
through the same augmentation.
"""

from __future__ import annotations

import cv2
import numpy as np

# MediaPipe FaceMesh (468-point) landmark indices.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
EYES = (
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
)  # fmt: skip
BROWS = (276, 283, 282, 295, 285, 300, 293, 334, 296, 336, 46, 53, 52, 65, 55, 70, 63, 105, 66, 107)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
NOSE = (1, 2, 4, 5, 6, 19, 94, 168, 195, 197, 98, 327, 129, 358, 48, 278, 64, 294)
JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323)
CHEEKS = (234, 454, 93, 323)
# Convex hulls the mask is drawn from, with how often each is chosen: the whole face oval (most swaps
# replace it), the inner face (brows, eyes, nose, mouth), and parts.
MASK_REGIONS: dict[str, tuple[tuple[int, ...], float]] = {
    "oval": (FACE_OVAL, 0.40),
    "inner": (BROWS + EYES + NOSE + LIPS, 0.30),
    "inner_wide": (BROWS + EYES + NOSE + LIPS + CHEEKS, 0.10),
    "upper": (BROWS + EYES + NOSE[:10], 0.10),
    "lower": (NOSE + LIPS + JAW, 0.10),
}
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
# The published kernel sizes are for faces of about the inference crop's size; scaled to the crop.
REFERENCE_SIDE = 224


def region_mask(landmarks: np.ndarray, shape: tuple[int, ...], region: str) -> np.ndarray:
    """A float32 0/1 mask of the convex hull of one region's landmarks."""
    points = np.asarray(landmarks, np.float32)[list(MASK_REGIONS[region][0])]
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    mask = np.zeros(shape[:2], np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
    return mask


def _odd(value: float) -> int:
    value = max(1, int(round(value)))
    return value if value % 2 else value + 1


def deform_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random affine (translate ~±3 %, scale 0.95-1.05), elastic deformation, then an eroded or dilated
    and blurred edge, so no two boundaries look alike."""
    height, width = mask.shape
    side = min(height, width)
    scale_to = side / REFERENCE_SIDE
    ys, xs = np.nonzero(mask > 0.5)
    centre = (float(xs.mean()), float(ys.mean())) if len(xs) else (width / 2.0, height / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, 0.0, float(rng.uniform(0.95, 1.05)))
    matrix[:, 2] += rng.uniform(-0.03, 0.03, 2) * np.array([width, height])
    warped = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR)
    # Elastic: a smooth random displacement field from a coarse grid, a few percent of the side.
    grid = rng.uniform(-1.0, 1.0, (2, 5, 5)).astype(np.float32) * side * rng.uniform(0.0, 0.04)
    dx = cv2.resize(grid[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(grid[1], (width, height), interpolation=cv2.INTER_CUBIC)
    map_x, map_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    warped = cv2.remap(warped, map_x + dx, map_y + dy, cv2.INTER_LINEAR, borderValue=0.0)
    kernel = np.ones((_odd(rng.uniform(5, 25) * scale_to * 0.5),) * 2, np.uint8)
    if rng.random() < 0.5:
        warped = cv2.erode(warped, kernel)
    elif rng.random() < 0.5:
        warped = cv2.dilate(warped, kernel)
    blurred = cv2.GaussianBlur(warped, (_odd(rng.uniform(5, 25) * scale_to),) * 2, 0)
    # Blurring a thin region can leave it faint: renormalise so its core is fully blended.
    peak = float(blurred.max())
    return blurred / peak if peak > 0 else blurred


def _colour_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    choice = rng.integers(0, 3)
    if choice == 0:  # RGB shift
        pixels += rng.uniform(-20, 20, 3)
    elif choice == 1:  # HSV shift
        hsv = cv2.cvtColor(np.clip(pixels, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
        hsv[..., 1:] += rng.uniform(-25, 25, 2)
        pixels = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    else:  # brightness / contrast
        pixels = (pixels - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-20, 20)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _quality_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Downscale x2 or x4 and back, or sharpen: the sharpness mismatch of a pasted face."""
    height, width = image.shape[:2]
    choice = rng.integers(0, 3)
    if choice < 2:
        factor = 2 if choice == 0 else 4
        small = cv2.resize(
            image, (max(4, width // factor), max(4, height // factor)), interpolation=cv2.INTER_AREA
        )
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return sharpen(image, amount=float(rng.uniform(0.5, 1.5)))


def sharpen(image: np.ndarray, amount: float = 1.0, sigma: float = 1.0) -> np.ndarray:
    """Unsharp mask."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0)


def _source_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly moved and rescaled copy: the misalignment between a pasted face and its host."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), 0.0, float(rng.uniform(0.97, 1.03)))
    matrix[:, 2] += rng.uniform(-0.02, 0.02, 2) * np.array([width, height])
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )


def self_blend(image_rgb: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One self-blended pseudo-fake of a real RGB crop, with its FaceMesh landmarks in crop pixels."""
    return self_blend_with_weight(image_rgb, landmarks, rng)[0]


def self_blend_with_weight(
    image_rgb: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``self_blend``'s pseudo-fake and its blend weight (H, W) float32 in [0, 1]: how much of each
    pixel came from the transformed copy (the deformed mask times the blend ratio)."""
    names = list(MASK_REGIONS)
    weights = np.array([MASK_REGIONS[name][1] for name in names])
    region = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    mask = deform_mask(region_mask(landmarks, image_rgb.shape, region), rng)
    # Never an empty blend: a pair whose fake equals its real would teach the model noise.
    assert mask.max() > 0.0, f"empty {region} mask"
    source = _quality_change(_colour_shift(_source_jitter(image_rgb, rng), rng), rng)
    weight = (mask * float(rng.choice(BLEND_RATIOS)))[..., None]
    blended = source.astype(np.float32) * weight + image_rgb.astype(np.float32) * (1.0 - weight)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8), weight[..., 0]


def boundary_map(weight: np.ndarray, side: int) -> np.ndarray:
    """The blending boundary of a blend weight as a (side, side) float32 map in [0, 1] (Face X-ray's
    B = 4 w (1 - w); Li et al., CVPR 2020): high where the two copies mix, zero where the picture is
    all one of them. Area-resized to the map's side, then scaled back to its full-resolution peak so a
    boundary a few pixels wide does not fade to nothing in a coarse map."""
    boundary = 4.0 * weight * (1.0 - weight)
    peak = float(boundary.max())
    small = cv2.resize(boundary.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    small_peak = float(small.max())
    if peak <= 0.0 or small_peak <= 0.0:
        return np.zeros((side, side), np.float32)
    return np.clip(small * (peak / small_peak), 0.0, 1.0).astype(np.float32)


def usable_landmarks(landmarks: np.ndarray | None, shape: tuple[int, ...], min_side: int = 48) -> bool:
    """Whether a crop can be blended: landmarks found, and an oval of at least min_side pixels inside."""
    if landmarks is None:
        return False
    oval = np.asarray(landmarks)[list(FACE_OVAL)]
    extent = oval.max(axis=0) - oval.min(axis=0)
    inside = (oval[:, 0].min() > -2) & (oval[:, 1].min() > -2)
    inside &= (oval[:, 0].max() < shape[1] + 2) & (oval[:, 1].max() < shape[0] + 2)
    return bool(min(extent) >= min_side and inside)
