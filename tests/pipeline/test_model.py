import numpy as np
import pytest

from stream_detector.pipeline.model import (
    apply_platt_scaling,
    build_model,
    fit_platt_scaling,
    fold_platt_scaling,
)


@pytest.mark.slow
def test_reference_layer_stack_and_parameter_count():
    model = build_model()
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer", "Rescaling",
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
        "GlobalAveragePooling2D",
        "Dense", "Dropout", "ReLU", "Dense", "Dropout", "ReLU", "Dense", "Dropout", "ReLU",
        "Dense",
    ]  # fmt: skip
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [64, 64, 64, 32, 16, 16]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 3 + [(3, 3)] * 3
    assert [c.dilation_rate for c in convs] == [(1, 1)] * 3 + [(2, 2)] * 3
    assert [d.rate for d in model.layers if type(d).__name__ == "Dropout"] == [0.5] * 3
    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"
    # The reference's 653,314 had two output units; one unit has 401 fewer weights.
    assert model.count_params() == 653_314 - 401


def test_platt_scaling_recovers_a_known_miscalibration_and_folds_exactly():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4000)
    true_logit = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.0, 4000)
    overconfident = 1 / (1 + np.exp(-(3.0 * true_logit)))  # three times too sharp
    slope, intercept = fit_platt_scaling(overconfident, labels)
    assert slope == pytest.approx(2.0 / 3.0, abs=0.1)  # undoes the sharpening (truth slope is 2 on logits)
    model = build_model(input_size=64)
    batch = rng.integers(0, 256, (4, 64, 64, 3)).astype(np.float32)
    before = np.asarray(model(batch, training=False)).reshape(-1)
    fold_platt_scaling(model, slope, intercept)
    after = np.asarray(model(batch, training=False)).reshape(-1)
    expected = 1 / (1 + np.exp(-(slope * np.log(before / (1 - before)) + intercept)))
    # train.py derives the calibrated validation scores with apply_platt_scaling, not a second pass.
    np.testing.assert_allclose(apply_platt_scaling(before, slope, intercept), expected, atol=1e-6)
    np.testing.assert_allclose(after, expected, atol=1e-5)


def test_model_files_are_found_on_the_search_path_or_named_where_they_were_looked_for(tmp_path, monkeypatch):
    from stream_detector.errors import ModelError
    from stream_detector.pipeline import model

    # The source checkout is first on the path (editable installs, tests), and holds the files.
    monkeypatch.delenv(model.MODEL_DIR_ENVIRONMENT, raising=False)
    assert model.model_dir() == model.CHECKOUT_MODEL_DIR
    # An installed package without a checkout: the data folder pip put the files in.
    installed = tmp_path / "share" / "stream-detector" / "model"
    installed.mkdir(parents=True)
    (installed / model.TFLITE_INT8_FILE).write_bytes(b"x")
    monkeypatch.setattr(model, "CHECKOUT_MODEL_DIR", tmp_path / "no-checkout" / "model")
    monkeypatch.setattr(model, "INSTALLED_MODEL_DIR", installed)
    assert model.model_dir() == installed
    # Nowhere: one line naming every place looked in.
    monkeypatch.setenv(model.MODEL_DIR_ENVIRONMENT, str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="model files not found; looked in .*empty"):
        model.model_dir()


def test_the_wheel_carries_the_model_and_the_face_model_checksums():
    import tomllib

    from tests.conftest import REPO

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = project["data-files"]["share/stream-detector/model"]
    assert {"model/detector_int8.tflite", "model/detector_fp32.tflite", "model/detector.keras"} <= set(
        shipped
    )
    assert all((REPO / name).is_file() for name in shipped)
    assert "pipeline/face_models.sha256" in project["package-data"]["stream_detector"]
