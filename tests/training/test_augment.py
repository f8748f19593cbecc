import cv2
import numpy as np
import pytest

from stream_detector.training.augment import STRENGTHS, TWINS, augment, augment_with_mask, degraded_view
from stream_detector.training.dataset import is_lossless_file, jpeg


def test_augment_gives_model_sized_uint8_views_that_vary():
    rng = np.random.default_rng(0)
    crop = np.random.default_rng(1).integers(0, 256, (116, 116, 3), dtype=np.uint8)
    views = [augment(crop, rng) for _ in range(20)]
    assert all(view.shape == (224, 224, 3) and view.dtype == np.uint8 for view in views)
    assert len({view.tobytes() for view in views}) == 20


def test_both_classes_are_recompressed_alike():
    # The shortcut trap: a lossless image must come out JPEG-compressed as often as a JPEG one.
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))
    lossless, compressed = smooth, jpeg(smooth, 75)
    a = np.mean([blockiness(augment(lossless, rng, size=128)) for _ in range(60)])
    b = np.mean([blockiness(augment(compressed, rng, size=128)) for _ in range(60)])
    assert abs(a - b) / b < 0.25


def blockiness(image):
    """Energy on the 8-pixel grid that JPEG leaves behind, relative to elsewhere."""
    columns = np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))
    return columns[7::8].mean() / (columns.mean() + 1e-6)


def test_the_degraded_twin_is_the_same_view_compressed_further():
    # The consistency pair: same picture (same place, same size), carrying one more JPEG pass.
    rng = np.random.default_rng(2)
    smooth = np.tile(np.linspace(0, 255, 224, dtype=np.uint8)[None, :, None], (224, 1, 3))
    twins = [degraded_view(smooth, rng) for _ in range(20)]
    assert all(twin.shape == smooth.shape and twin.dtype == np.uint8 for twin in twins)
    assert all(np.abs(twin.astype(int) - smooth).mean() < 6 for twin in twins)
    assert blockiness(smooth) < 1.05 and np.mean([blockiness(twin) for twin in twins]) > 1.3


def test_lossless_files_are_told_by_content_not_name(tmp_path):
    import cv2

    image = np.zeros((16, 16, 3), np.uint8)
    png_named_jpg = tmp_path / "a.jpg"
    png_named_jpg.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    real_jpeg = tmp_path / "b.png"
    real_jpeg.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    assert is_lossless_file(png_named_jpg) and not is_lossless_file(real_jpeg)


def test_the_light_strength_compresses_less_than_the_standard_one():
    # train.py --augmentation light: the JPEG floor at 60, not 30, in the view and in its twin.
    smooth = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))
    blocky = {}
    for name in ("standard", "light"):
        rng = np.random.default_rng(3)
        views = [augment(smooth, rng, 128, STRENGTHS[name]) for _ in range(80)]
        twins = [degraded_view(view, rng, STRENGTHS[name]) for view in views]
        blocky[name] = (np.mean([blockiness(v) for v in views]), np.mean([blockiness(t) for t in twins]))
    assert blocky["light"][0] < blocky["standard"][0]
    assert blocky["light"][1] < blocky["standard"][1]


def test_the_flip_strength_only_mirrors():
    # train.py --augmentation flip: each view is the crop as the file holds it, or its mirror image.
    rng = np.random.default_rng(5)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    mask = np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)
    seen = set()
    for _ in range(40):
        view, moved = augment_with_mask(face, mask, rng, 96, STRENGTHS["flip"])
        mirrored = np.array_equal(view, face[:, ::-1])
        assert mirrored or np.array_equal(view, face)
        assert np.array_equal(moved, mask[:, ::-1] if mirrored else mask)
        seen.add(mirrored)
    assert seen == {True, False}
    # The standard strength does change pixels (so the test above could fail).
    assert not np.array_equal(augment(face, np.random.default_rng(5), 96), face)


def test_the_jpeg_strength_only_mirrors_and_compresses():
    # train.py --augmentation jpeg: the flip and the two JPEG passes; no blur, scaling or colour step,
    # so each view stays within JPEG's error of the crop or of its mirror image.
    rng = np.random.default_rng(6)
    face = cv2.GaussianBlur(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), (0, 0), 4.0)
    compressed = 0
    for _ in range(40):
        view = augment(face, rng, 96, STRENGTHS["jpeg"])
        error = min(
            np.abs(view.astype(int) - face.astype(int)).mean(),
            np.abs(view.astype(int) - face[:, ::-1].astype(int)).mean(),
        )
        assert error < 4.0
        compressed += error > 0
    assert compressed >= 30  # nine views in ten get the first pass
    # A colour or blur step would move a view further than that (so the bound above could fail).
    moved = [np.abs(augment(face, rng, 96).astype(int) - face.astype(int)).mean() for _ in range(40)]
    assert max(moved) > 8.0


def _two_faces():
    from stream_detector.training.dataset import FaceSet

    crops = [np.zeros((64, 64, 3), np.uint8)] * 2
    return FaceSet("x", crops, np.array([0, 1]), ("a.png", "b.png"), ("a", "b"), ())


def test_an_unknown_strength_is_refused_by_name():
    from stream_detector.training.loop import AugmentedBatches

    with pytest.raises(ValueError, match="heavy"):
        AugmentedBatches([_two_faces()], 2, 0, augmentation="heavy")


def _degraded_view_as_v2_trained(image, rng):
    """degraded_view as it was written when v2 was trained (before the twin option), kept verbatim so
    that the standard twin is shown to draw the same twins from the same random state."""
    import cv2

    image = np.ascontiguousarray(image)
    change = rng.random()
    if change < 0.2:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    elif change < 0.4:
        side = image.shape[0]
        small = max(16, int(side / rng.uniform(1.5, 3.0)))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (side, side))
    return jpeg(image, int(rng.integers(30, 91)))


def _textured_face_sized_image():
    import cv2

    noise = np.random.default_rng(5).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 1.2)


def test_the_standard_twin_draws_exactly_what_v2_trained_on():
    # train.py's default must still reproduce the shipped model's recipe, draw for draw.
    image = _textured_face_sized_image()
    ours, before = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(60):
        assert np.array_equal(degraded_view(image, ours), _degraded_view_as_v2_trained(image, before))


def test_the_sharpness_twin_changes_sharpness_both_ways_far_more_often():
    # train.py --twin sharpness: nearly every twin is softer or sharper than its view by 1.5x or
    # more in Laplacian variance, some of them sharper; the standard twin keeps most views' sharpness.
    from stream_detector.training.confounds import laplacian_variance

    image = _textured_face_sized_image()
    base = laplacian_variance(image)
    ratios = {}
    for name in TWINS:
        rng = np.random.default_rng(4)
        ratios[name] = np.array(
            [laplacian_variance(degraded_view(image, rng, twin=TWINS[name])) / base for _ in range(200)]
        )
    changed = {name: np.mean((r < 1 / 1.5) | (r > 1.5)) for name, r in ratios.items()}
    assert changed["sharpness"] > 0.75 and changed["standard"] < 0.45
    assert np.mean(ratios["sharpness"] > 1.5) > 0.15 and np.mean(ratios["standard"] > 1.5) < 0.1


def test_an_unknown_twin_is_refused_by_name():
    from stream_detector.training.loop import AugmentedBatches

    with pytest.raises(ValueError, match="twin 'blurry'"):
        AugmentedBatches([_two_faces()], 2, 0, twin="blurry")


def test_a_mask_moves_with_its_view_and_changes_nothing_the_view_draws():
    from stream_detector.training.augment import augment_with_mask

    # The left half bright, the right half dark, and a mask of the left half.
    image = np.zeros((160, 160, 3), np.uint8)
    image[:, :80] = 220
    mask = np.zeros((160, 160), np.float32)
    mask[:, :80] = 1.0
    flipped = 0
    for seed in range(24):
        view, moved = augment_with_mask(image, mask, np.random.default_rng(seed), 112)
        assert np.array_equal(view, augment(image, np.random.default_rng(seed), 112))
        columns_view = view.mean(axis=(0, 2))
        small = cv2.resize(moved, (112, 112), interpolation=cv2.INTER_AREA).mean(axis=0)
        assert np.corrcoef(columns_view, small)[0, 1] > 0.9  # bright where the mask is, flipped or not
        flipped += int(small[:20].mean() < 0.5)
    assert 4 <= flipped <= 20  # about half the views are mirrored, their masks with them
