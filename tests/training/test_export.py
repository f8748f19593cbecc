"""The LiteRT exports give the Keras model's answers: on real face crops, and in AUC where data exists."""

import numpy as np
import pytest

from stream_detector.pipeline.classifier import load_classifier
from stream_detector.pipeline.crops import crop_face
from stream_detector.training.dataset import jpeg
from tests.conftest import shared_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifiers():
    return {name: load_classifier(name) for name in ("keras", "fp32", "int8")}


@pytest.fixture(scope="module")
def face_crops(astronaut_bgr):
    """Real face crops: the astronaut at several framings, qualities and flips."""
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(24):
        x1, y1 = 170 + rng.integers(-25, 25), 60 + rng.integers(-25, 25)
        side = rng.integers(110, 170)
        crop = crop_face(astronaut_bgr, (x1, y1, x1 + side, y1 + side))
        crop = jpeg(crop, int(rng.integers(40, 95)))
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(np.stack(crops))


def test_exports_match_keras_on_real_crops(classifiers, face_crops):
    reference = classifiers["keras"].classify(face_crops)
    assert np.max(np.abs(classifiers["fp32"].classify(face_crops) - reference)) < 1e-3
    # Full-integer int8 rounds weights and activations; its error budget is what the AUC test below bounds.
    assert np.max(np.abs(classifiers["int8"].classify(face_crops) - reference)) < 0.08


def test_batched_and_single_calls_agree(classifiers, face_crops):
    for classifier in classifiers.values():
        batched = classifier.classify(face_crops[:5])
        single = np.concatenate([classifier.classify(face_crops[i : i + 1]) for i in range(5)])
        np.testing.assert_allclose(batched, single, atol=1e-4)
        assert classifier.classify(face_crops[:0]).shape == (0,)


def test_export_auc_matches_keras_on_held_out_faces(classifiers):
    import cv2

    from stream_detector.training.dataset import decode_image, list_images, resize_crop
    from stream_detector.training.metrics import roc_auc

    # 300 of the 20,000 DFDC crops, decoded directly: loading the whole set would cost gigabytes.
    folder = shared_data("faces", "dfdc")
    items = list_images(folder)
    chosen = np.random.default_rng(0).permutation(len(items))[:300]
    images = np.stack(
        [resize_crop(cv2.cvtColor(decode_image(items[i][0]), cv2.COLOR_BGR2RGB)) for i in chosen]
    )
    labels = np.array([items[i][1] for i in chosen])
    auc = {name: roc_auc(labels, classifier.classify(images)) for name, classifier in classifiers.items()}
    assert abs(auc["fp32"] - auc["keras"]) <= 0.005
    assert abs(auc["int8"] - auc["keras"]) <= 0.005


def _float_tensors(path) -> int:
    """How many tensors of a LiteRT file are float32: a full-integer model keeps only its input and
    output float; dynamic-range int8 keeps every activation float."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return sum(1 for detail in interpreter.get_tensor_details() if detail["dtype"] == np.float32)


def test_the_int8_export_quantizes_activations_only_with_calibration_crops(tmp_path):
    from stream_detector.pipeline.model import TFLITE_INT8_FILE, build_model
    from stream_detector.training.export import export_all, sample_crops

    model = build_model(input_size=64)
    rng = np.random.default_rng(0)
    crops = sample_crops([rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(12)], 64, count=8)
    assert crops.shape == (8, 64, 64, 3)
    dynamic = export_all(model, tmp_path / "dynamic")["int8"]
    full = export_all(model, tmp_path / "full", crops)["int8"]
    assert full.name == TFLITE_INT8_FILE
    assert _float_tensors(full) == 2 < _float_tensors(dynamic)
    with pytest.raises(ValueError, match="calibration crops must be"):
        export_all(model, tmp_path / "bad", crops[:, :16, :16])


def test_the_shipped_int8_file_is_full_integer():
    from stream_detector.pipeline.model import TFLITE_INT8_FILE, model_dir

    # ~1.5x faster per crop than dynamic-range int8 at the same validation AUC (model card).
    assert _float_tensors(model_dir() / TFLITE_INT8_FILE) == 2
