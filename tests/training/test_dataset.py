import cv2
import numpy as np
import pytest

from stream_detector.errors import StreamDetectorError
from stream_detector.pipeline.crops import CROP_SCALE
from stream_detector.training.dataset import (
    decode_image,
    find_class_folders,
    list_images,
    native_crop,
    read_record_splits,
    split_by_group,
)


def write_image(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def test_png_named_jpg_decodes_to_the_same_pixels(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image)
    (tmp_path / "x.png").rename(tmp_path / "x.jpg")
    np.testing.assert_array_equal(decode_image(tmp_path / "x.jpg"), image)


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(StreamDetectorError, match="unreadable image: .*broken.jpg"):
        decode_image(tmp_path / "broken.jpg")


def test_class_folders_are_found_and_empty_classes_refused(tmp_path):
    with pytest.raises(StreamDetectorError, match="no real/ and fake/"):
        find_class_folders(tmp_path)
    write_image(tmp_path / "set" / "real" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "set" / "fake").mkdir()
    assert find_class_folders(tmp_path) == [tmp_path / "set"]
    with pytest.raises(StreamDetectorError, match="fake.*empty"):
        list_images(tmp_path / "set")


def test_group_split_never_puts_one_identity_on_two_sides():
    rng = np.random.default_rng(1)
    groups = [f"person{rng.integers(0, 300)}" for _ in range(2000)]
    parts = split_by_group(groups, {"train": 0.7, "validation": 0.15, "test": 0.15}, seed=3)
    seen = [{groups[i] for i in indices} for indices in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(indices) for indices in parts.values()) == len(groups)
    assert 0.6 < len(parts["train"]) / len(groups) < 0.8


def test_native_crop_follows_the_shared_convention():
    image = np.zeros((300, 400, 3), np.uint8)
    crop = native_crop(image, np.array([150, 100, 250, 200], np.float32))
    side = round(100 * CROP_SCALE)
    assert crop.shape == (side, side, 3)
    assert native_crop(image, None).shape == (300, 400, 3)


def test_split_lists_survive_moving_the_data(tmp_path):
    from stream_detector.training.dataset import in_file_list, relative_name

    name = relative_name(tmp_path / "data" / "dfdc" / "real" / "a.jpg", tmp_path / "data")
    assert name == "dfdc/real/a.jpg"
    assert in_file_list("/elsewhere/data/dfdc/real/a.jpg", {name})
    assert not in_file_list("/elsewhere/data/dfdc/fake/a.jpg", {name})


@pytest.mark.slow
def test_equalising_gives_a_lossless_file_the_exact_history_of_a_jpeg_75_file(tmp_path):
    # The shortcut trap at its root: the same picture saved as PNG (real) and as JPEG-75 (fake)
    # must reach training as the same pixels, so compression says nothing about the label.
    from stream_detector.training.dataset import FAKE_CLASS_JPEG_QUALITY, load_face_set

    picture = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (128, 128, 3), np.uint8), (0, 0), 2)
    write_image(tmp_path / "set" / "real" / "a.png", picture)
    (tmp_path / "set" / "fake").mkdir()
    cv2.imwrite(str(tmp_path / "set" / "fake" / "b.jpg"), picture, [cv2.IMWRITE_JPEG_QUALITY, 75])
    plain = load_face_set(tmp_path / "set", no_face="whole", progress=False)
    equalised = load_face_set(
        tmp_path / "set", no_face="whole", progress=False, equalise_quality=FAKE_CLASS_JPEG_QUALITY
    )
    assert list(plain.labels) == list(equalised.labels) == [0, 1]
    assert not np.array_equal(plain.crops[0], plain.crops[1])
    np.testing.assert_array_equal(equalised.crops[0], equalised.crops[1])
    np.testing.assert_array_equal(equalised.crops[1], plain.crops[1])  # JPEG files are left alone


@pytest.mark.slow
def test_a_split_counts_only_its_own_images_without_a_face(tmp_path):
    from stream_detector.training.dataset import load_face_set, relative_name

    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)
    for name in ("real/a.png", "real/b.png", "fake/c.png"):
        write_image(tmp_path / "set" / name, noise)
    faces = load_face_set(tmp_path / "set", no_face="whole", progress=False)
    assert faces.no_face == 3 and len(faces) == 3
    one_split = {relative_name(tmp_path / "set" / "real" / "b.png", tmp_path)}
    assert faces.no_face_in(one_split) == 1
    assert faces.no_face_in(None) == 3
    assert faces.no_face_in({"set/fake/elsewhere.png"}) == 0


def test_a_record_without_usable_split_lists_is_one_line_naming_what_is_missing(tmp_path):
    import json

    record = tmp_path / "training.json"
    good = {"train": {"dfdc": ["real/a.png"]}, "validation": {"dfdc": ["fake/b.png"]}}
    record.write_text(json.dumps({"splits": good}))
    assert read_record_splits(record, "--split", ("validation",)) == {"validation": {"dfdc": ["fake/b.png"]}}
    for content, problem in (
        # model/experiments/ keeps records with their split lists stripped
        ({"split_sizes": {"train": {"dfdc": 1}}}, "has no split lists"),
        ({"splits": ["train"]}, "has no split lists"),
        ({"splits": {"train": good["train"]}}, "has no validation split list"),
        ({"splits": {**good, "validation": {"dfdc": "fake/b.png"}}}, "the validation list of 'dfdc'"),
        ({"splits": {**good, "validation": {"dfdc": [3]}}}, "is not a list of file names"),
    ):
        record.write_text(json.dumps(content))
        with pytest.raises(StreamDetectorError, match=f"^--keep-in-train: .*training.json.*{problem}"):
            read_record_splits(record, "--keep-in-train", ("train", "validation"))
