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
