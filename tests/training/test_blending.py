import cv2
import numpy as np
import pytest

from stream_detector.training.augment import match_blockiness, match_sharpness
from stream_detector.training.blending import (
    FACE_OVAL,
    MASK_REGIONS,
    deform_mask,
    region_mask,
    self_blend,
    usable_landmarks,
)
from stream_detector.training.confounds import jpeg_blockiness, laplacian_variance, roc_auc
from stream_detector.training.dataset import jpeg


def synthetic_face(size: int = 224, seed: int = 0):
    """A textured picture and 468 landmark-like points inside a face-sized ellipse."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 1.2)
    angles = rng.uniform(0, 2 * np.pi, 468)
    radius = np.sqrt(rng.uniform(0.05, 1.0, 468))
    points = np.stack(
        [size / 2 + np.cos(angles) * radius * size * 0.3, size / 2 + np.sin(angles) * radius * size * 0.34], 1
    )
    # The oval points on the ellipse itself.
    oval_angles = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    points[list(FACE_OVAL)] = np.stack(
        [size / 2 + np.cos(oval_angles) * size * 0.3, size / 2 + np.sin(oval_angles) * size * 0.34], 1
    )
    return image, points.astype(np.float32)


@pytest.mark.parametrize("region", list(MASK_REGIONS))
def test_every_region_mask_is_non_empty_and_inside_the_picture(region):
    image, points = synthetic_face()
    mask = region_mask(points, image.shape, region)
    assert mask.sum() > 100
    deformed = deform_mask(mask, np.random.default_rng(3))
    assert deformed.max() == pytest.approx(1.0)
    # The boundary lies inside the crop: the outer rows and columns are untouched.
    assert deformed[:3].max() == 0 and deformed[-3:].max() == 0
    assert deformed[:, :3].max() == 0 and deformed[:, -3:].max() == 0


def test_a_self_blend_changes_the_face_and_keeps_the_surroundings():
    image, points = synthetic_face()
    rng = np.random.default_rng(5)
    for _ in range(20):
        blended = self_blend(image, points, rng)
        assert blended.shape == image.shape and blended.dtype == np.uint8
        difference = np.abs(blended.astype(int) - image).sum(axis=2)
        assert difference[100:124, 100:124].mean() > 0.5  # the middle of the face changed
        assert difference[:5].max() == 0 and difference[-5:].max() == 0  # the edges did not


def test_landmarks_that_are_missing_small_or_outside_are_not_blendable():
    image, points = synthetic_face()
    assert usable_landmarks(points, image.shape)
    assert not usable_landmarks(None, image.shape)
    assert not usable_landmarks(points * 0.1, image.shape)  # a face of ~15 px
    assert not usable_landmarks(points + 150, image.shape)  # mostly outside


def test_sharpness_matching_blurs_the_sharper_class_to_the_others_distribution():
    rng = np.random.default_rng(0)
    sharp = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(30)]
    soft = [
        cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 1.5) for _ in range(30)
    ]
    labels = np.array([0] * 30 + [1] * 30)
    matched, changed = match_sharpness(sharp + soft, labels)
    assert changed >= 25
    before = np.median([laplacian_variance(c) for c in sharp]) / np.median(
        [laplacian_variance(c) for c in soft]
    )
    after = np.median([laplacian_variance(c) for c in matched[:30]]) / np.median(
        [laplacian_variance(c) for c in matched[30:]]
    )
    assert before > 5 and 0.7 < after < 1.4
    # The blurrier class is left as it was.
    assert all(a is b for a, b in zip(matched[30:], soft, strict=True))


def test_blockiness_matching_recompresses_the_less_blocky_class_to_the_others_distribution():
    rng = np.random.default_rng(0)

    def smooth() -> np.ndarray:
        noise = rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)
        return cv2.GaussianBlur(noise, (0, 0), 1.0)

    clean = [smooth() for _ in range(30)]
    # The blocky class: compressed hard, with the 8-pixel grid anywhere in the crop as in a cut face.
    blocky = []
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, 8, 2))
        blocky.append(np.ascontiguousarray(jpeg(smooth(), int(rng.integers(20, 45)))[y : y + 64, x : x + 64]))
    clean = [np.ascontiguousarray(image[:64, :64]) for image in clean]
    labels = np.array([0] * 30 + [1] * 30)
    before = roc_auc(labels, [jpeg_blockiness(c) for c in clean + blocky])
    matched, changed = match_blockiness(clean + blocky, labels)
    after = roc_auc(labels, [jpeg_blockiness(c) for c in matched])
    assert before > 0.9 and changed >= 25
    assert 0.3 < after < 0.7
    # The blockier class is left as it was.
    assert all(a is b for a, b in zip(matched[30:], blocky, strict=True))


@pytest.mark.slow
def test_facemesh_finds_the_landmarks_of_a_real_photographed_face(astronaut_bgr):
    from stream_detector.pipeline.crops import crop_face
    from stream_detector.training.landmarks import FaceMeshLandmarker

    crop = crop_face(astronaut_bgr, (175, 55, 320, 200))
    points = FaceMeshLandmarker().landmarks(crop)
    assert points is not None and points.shape == (468, 2)
    # The face fills the middle of its crop: the oval is inside, and big enough to blend.
    assert usable_landmarks(points, crop.shape)
    assert FaceMeshLandmarker().landmarks(np.zeros_like(crop)) is None


def test_a_blend_weight_covers_exactly_the_pixels_the_blend_changed():
    from stream_detector.training.blending import self_blend_with_weight

    image, points = synthetic_face(160, seed=4)
    blended, weight = self_blend_with_weight(image, points, np.random.default_rng(2))
    assert weight.shape == image.shape[:2] and weight.dtype == np.float32
    assert weight.min() >= 0.0 and weight.max() <= 1.0 and weight.max() > 0.2
    changed = np.abs(blended.astype(np.int16) - image.astype(np.int16)).max(axis=2) > 2
    # Where nothing came from the copy the picture is untouched; the change lies under the weight.
    assert not changed[weight == 0.0].any()
    assert changed[weight > 0.5].mean() > 0.5
    # The same draws as self_blend: the pseudo-fake does not depend on whether the weight is asked for.
    assert np.array_equal(self_blend(image, points, np.random.default_rng(2)), blended)


def test_the_boundary_map_rings_the_blend_and_is_empty_without_one():
    from stream_detector.training.blending import boundary_map

    yy, xx = np.mgrid[0:224, 0:224]
    disc = ((yy - 112) ** 2 + (xx - 112) ** 2 < 70**2).astype(np.float32)
    weight = cv2.GaussianBlur(disc, (0, 0), 6)
    ring = boundary_map(weight, 7)
    assert ring.shape == (7, 7) and ring.max() == pytest.approx(1.0, abs=0.02)
    # High on the disc's edge, low in its middle (all copy) and in the corners (all original).
    assert ring[3, 3] < 0.1 and ring[0, 0] < 0.1 and ring[3, 1] > 0.5 and ring[1, 3] > 0.5
    # A half blend mixes the two copies all over the inner face: the inside is boundary too.
    assert boundary_map(weight * 0.5, 7)[3, 3] > 0.9
    assert not boundary_map(np.zeros((224, 224), np.float32), 7).any()
