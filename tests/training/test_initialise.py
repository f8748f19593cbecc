import numpy as np
import pytest

pytestmark = pytest.mark.slow  # builds a Keras model


def test_every_layer_starts_at_unit_variance_and_no_channel_silent():
    from stream_detector.pipeline.model import build_model
    from stream_detector.training.initialise import silent_fraction, unit_variance_start

    model = build_model(input_size=None)
    images = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3)).astype(np.float32)
    # Scaled far down first: what shrinking activations look like; the start must undo it.
    for layer in model.layers:
        if layer.get_weights():
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * 0.05, bias])
    stds = unit_variance_start(model, images)
    assert len(stds) == 9 and all(abs(std - 1.0) < 0.06 for std in stds)
    assert silent_fraction(model, images) < 0.5  # random pixels; real faces left 6 % silent
    outputs = np.asarray(model(images, training=False)).ravel()
    assert np.all(np.abs(outputs - 0.5) < 0.45)  # the output unit starts undecided
