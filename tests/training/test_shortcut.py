"""The shortcut trap: JPEG-compressing a real face must not turn the shipped model's verdict to fake."""

import numpy as np
import pytest

from stream_detector.pipeline.classifier import load_classifier
from stream_detector.pipeline.crops import crop_face
from stream_detector.training.dataset import in_file_list, jpeg, load_face_set, resize_crop
from tests.conftest import REPO, shared_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier():
    from stream_detector.pipeline.engine import EngineSettings

    # The model scored as the engine scores it (mirror averaging is its default): the verdicts users see.
    return load_classifier("keras", mirror_average=EngineSettings().mirror_average)


def test_astronaut_stays_real_at_every_jpeg_quality(classifier, astronaut_bgr):
    crop = crop_face(astronaut_bgr, (175, 55, 320, 200))
    p_fake = classifier.classify(np.stack([crop] + [jpeg(crop, q) for q in (95, 75, 50, 30)]))
    assert p_fake[0] < 0.5, f"a real photo scored p(fake)={p_fake[0]:.3f}"
    assert np.all(p_fake[1:] < 0.5), f"JPEG turned a real face fake: {np.round(p_fake, 3)}"


# JPEG at q70 and q50 flips more than 5 % of the ffhq-tpdne test reals since v5 (the consistency weight
# halved from v4's 2; model/MODEL_CARD.md, "Robustness"): v5 through int8 (evaluate.py) 6.4 % at both
# (14 of 218), through Keras, mirror-averaged (this test) 5.5 % at q50 and over the line at q70; v6,
# which keeps that weight, through int8 6.9 % at q70 and 6.0 % at q50, and over the line at both here.
# v4 was on the line at q70 only (5.0 %). Strict, so a model that meets the line again fails here.
MISSED_JPEG_TARGET = pytest.mark.xfail(
    strict=True, reason="v6 flips over 5 % of ffhq-tpdne test reals at JPEG q70 and q50: see the model card"
)


@pytest.mark.parametrize(
    "quality", [90, pytest.param(70, marks=MISSED_JPEG_TARGET), pytest.param(50, marks=MISSED_JPEG_TARGET)]
)
def test_real_test_faces_rarely_flip_to_fake_when_compressed(classifier, real_test_faces, quality):
    clean = classifier.classify(np.stack([resize_crop(c) for c in real_test_faces]))
    compressed = classifier.classify(np.stack([resize_crop(jpeg(c, quality)) for c in real_test_faces]))
    flipped = np.mean((clean < 0.5) & (compressed >= 0.5))
    # A model that learned the PNG-vs-JPEG shortcut flips 17-28% of real faces here (see
    # ../shared/data/README.md); one trained through identical re-compression flips few.
    assert flipped < 0.05, f"JPEG q{quality} flipped {flipped:.1%} of real faces to fake"


@pytest.fixture(scope="module")
def real_test_faces():
    import json

    record = json.loads((REPO / "model" / "training.json").read_text())
    test_files = set(record["splits"]["test"]["ffhq-tpdne"])
    folder = shared_data("faces", "ffhq-tpdne")
    real = [
        crop
        for sub in ("train", "val")
        for faces in [load_face_set(folder / sub, no_face="whole", cache_dir=REPO / ".cache", progress=False)]
        for crop, label, file in zip(faces.crops, faces.labels, faces.files, strict=True)
        if label == 0 and in_file_list(file, test_files)
    ]
    assert len(real) > 100
    return real


def _test_split_faces(record: dict, source: str, label: int) -> list[np.ndarray]:
    """RGB crops of one class of the shipped model's test split (never used to choose anything)."""
    import cv2

    from stream_detector.training.dataset import decode_image, list_images

    names = set(record["splits"]["test"][source])
    folder = shared_data("faces", source)
    if source == "ffhq-tpdne":  # whole-head thumbnails: the detector's crop, as training saw them
        return [
            crop
            for sub in ("train", "val")
            for faces in [
                load_face_set(folder / sub, no_face="whole", cache_dir=REPO / ".cache", progress=False)
            ]
            for crop, face_label, file in zip(faces.crops, faces.labels, faces.files, strict=True)
            if face_label == label and in_file_list(file, names)
        ]
    # DFDC files are tight face crops: the crop is the whole image (decoded directly, not the 20k set).
    return [
        cv2.cvtColor(decode_image(path), cv2.COLOR_BGR2RGB)
        for path, face_label in list_images(folder)
        if face_label == label and in_file_list(path, names)
    ]


def _scores(classifier, crops) -> np.ndarray:
    """p(fake) in batches: thousands of 224 px crops at once would need tens of GB in Keras."""
    return np.concatenate(
        [
            classifier.classify(np.stack([resize_crop(c) for c in crops[i : i + 64]]))
            for i in range(0, len(crops), 64)
        ]
    )


def _blur(sigma):
    import cv2

    return lambda crop: cv2.GaussianBlur(crop, (0, 0), sigma)


def _down_up(factor):
    import cv2

    def change(crop):
        side = crop.shape[0]
        small = cv2.resize(crop, (side // factor, side // factor), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)

    return change


# Targets the shipped model misses (model/MODEL_CARD.md, "Robustness": v6's blur sigma 2 still turns
# many real ffhq-tpdne and DFDC test faces fake (54.6 % and 8.3 % through int8; v5 59.2 % and 11.8 %),
# sharpening many ffhq-tpdne fakes real; on DFDC sharpening is under the line). Strict: a model that meets them turns these into failures, so the
# marks and the card are updated with it.
MISSED_SHARPNESS_TARGET = pytest.mark.xfail(
    strict=True, reason="v6 still reads sharpness: see model/MODEL_CARD.md, Robustness"
)


@MISSED_SHARPNESS_TARGET
@pytest.mark.parametrize("source", ["ffhq-tpdne", "dfdc"])
def test_blurring_or_downscaling_real_test_faces_rarely_turns_them_fake(classifier, source):
    import json

    record = json.loads((REPO / "model" / "training.json").read_text())
    real = _test_split_faces(record, source, label=0)
    assert len(real) > 100
    clean = _scores(classifier, real)
    for name, change in (
        ("blur 1", _blur(1.0)),
        ("blur 2", _blur(2.0)),
        ("down-up x2", _down_up(2)),
        ("down-up x3", _down_up(3)),
    ):
        changed = _scores(classifier, [change(c) for c in real])
        flipped = np.mean((clean < 0.5) & (changed >= 0.5))
        # The sharpness shortcut: a model that learned "blurrier = fake" turns these fake.
        assert flipped <= 0.05, f"{source}: {name} flipped {flipped:.1%} of real test faces to fake"


@pytest.mark.parametrize("source", [pytest.param("ffhq-tpdne", marks=MISSED_SHARPNESS_TARGET), "dfdc"])
def test_sharpening_fake_test_faces_rarely_turns_them_real(classifier, source):
    import json

    from stream_detector.training.blending import sharpen

    record = json.loads((REPO / "model" / "training.json").read_text())
    fake = _test_split_faces(record, source, label=1)
    assert len(fake) > 100
    clean = _scores(classifier, fake)
    sharpened = _scores(classifier, [sharpen(c) for c in fake])
    flipped = np.mean((clean >= 0.5) & (sharpened < 0.5))
    assert flipped <= 0.05, f"{source}: sharpening flipped {flipped:.1%} of fake test faces to real"
