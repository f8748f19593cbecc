import numpy as np

from stream_detector.augment import augment
from stream_detector.dataset import is_lossless_file, jpeg


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

    def blockiness(image):
        # Energy on the 8-pixel grid that JPEG leaves behind, relative to elsewhere.
        columns = np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))
        return columns[7::8].mean() / (columns.mean() + 1e-6)

    a = np.mean([blockiness(augment(lossless, rng, size=128)) for _ in range(60)])
    b = np.mean([blockiness(augment(compressed, rng, size=128)) for _ in range(60)])
    assert abs(a - b) / b < 0.25


class NoRandomSteps:
    """A generator under which augment takes none of its random steps (every coin comes up "no")."""

    def random(self):
        return 0.999

    def integers(self, low, high, size=None):
        return np.full(size, low) if size is not None else low

    def uniform(self, low, high, size=None):
        return low


def blockiness(image):
    columns = np.abs(np.diff(image.astype(np.float32), axis=1)).mean(axis=(0, 2))
    return columns[7::8].mean() / (columns.mean() + 1e-6)


def test_a_lossless_image_always_gets_the_jpeg_history_of_the_other_class():
    # Even when no random re-compression happens, a lossless crop leaves with a JPEG grid, as every
    # JPEG-75 fake does: "never compressed" no longer means "real".
    smooth = np.tile(np.linspace(0, 255, 128, dtype=np.uint8)[None, :, None], (128, 1, 3))
    plain = augment(smooth, NoRandomSteps(), size=128)
    equalised = augment(smooth, NoRandomSteps(), size=128, lossless=True)
    assert blockiness(plain) < 1.05 and blockiness(equalised) > 1.3


def test_lossless_files_are_told_by_content_not_name(tmp_path):
    import cv2

    image = np.zeros((16, 16, 3), np.uint8)
    png_named_jpg = tmp_path / "a.jpg"
    png_named_jpg.write_bytes(cv2.imencode(".png", image)[1].tobytes())
    real_jpeg = tmp_path / "b.png"
    real_jpeg.write_bytes(cv2.imencode(".jpg", image)[1].tobytes())
    assert is_lossless_file(png_named_jpg) and not is_lossless_file(real_jpeg)
