import numpy as np

from stream_detector.pipeline.crops import CROP_SCALE, crop_face, crop_faces, crop_square


def test_square_is_centred_and_scaled_inside_a_large_frame():
    x, y, side = crop_square((600, 300, 700, 420), (720, 1280, 3))
    assert side == round(120 * CROP_SCALE)
    assert abs((x + side / 2) - 650) <= 1 and abs((y + side / 2) - 360) <= 1


def test_square_shifts_inside_the_frame_instead_of_padding():
    x, y, side = crop_square((0, 0, 100, 100), (720, 1280, 3))
    assert (x, y) == (0, 0) and side == round(100 * CROP_SCALE)
    x, y, side = crop_square((1200, 650, 1280, 720), (720, 1280, 3))
    assert x + side == 1280 and y + side == 720


def test_tight_crop_maps_onto_the_whole_image():
    # A DFDC training face: its side is about 1.05x the detector's box (the median of the files).
    assert crop_square((5, 5, 219, 219), (224, 224, 3)) == (0, 0, 224)


def test_crops_are_rgb_224():
    image = np.zeros((100, 200, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    crop = crop_face(image, (50, 20, 110, 80))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert crop[..., 2].min() == 255 and crop[..., 0].max() == 0
    assert crop_faces(image, np.zeros((0, 4))).shape == (0, 224, 224, 3)
