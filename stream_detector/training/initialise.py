"""A data-driven start for a from-scratch run: every layer's output scaled to unit variance.

The fixed architecture has no normalisation. From He-normal weights its activations shrank by three
orders of magnitude over the six convolutions (model card, 'Experiments'), so Adam's fixed-size bias
steps were large next to them and the ReLUs died within an epoch. Layer-sequential unit-variance
initialisation (Mishkin & Matas, "All you need is a good init", ICLR 2016) rescales each
convolution's and dense layer's weights, in order, until its output on a real batch has unit variance,
and starts the biases slightly positive so that no unit begins silent.
"""

from __future__ import annotations

import numpy as np

POSITIVE_BIAS = 0.01
OUTPUT_KERNEL_SCALE = 0.1


def unit_variance_start(model, images: np.ndarray, tolerance: float = 0.05, rounds: int = 10) -> list[float]:
    """Rescale ``model``'s Conv2D and Dense weights in place; returns each layer's final output std.

    ``images``: one batch of training crops (pixel values 0..255), the same the model will see.
    The sigmoid output layer is not normalised but shrunk (its outputs start near p = 0.5).
    """
    import keras

    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense) and layer is not model.layers[-1]
    ]
    stds = []
    for layer in weighted:
        kernel, bias = layer.get_weights()
        bias = np.full_like(bias, POSITIVE_BIAS)
        layer.set_weights([kernel, bias])
        # The layer's output after its ReLU (fused into the convolutions): what the next layer reads.
        probe = keras.Model(model.inputs, layer.output)
        std = 0.0
        for _ in range(rounds):
            outputs = np.asarray(probe(images, training=False))
            std = float(outputs.std())
            if std <= 0:
                raise ValueError(f"layer {layer.name} outputs nothing on the start batch")
            if abs(std - 1.0) < tolerance:
                break
            kernel = kernel / std
            layer.set_weights([kernel, bias])
        stds.append(std)
    # The output unit starts small, so the first steps are not spent undoing confident guesses.
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel * OUTPUT_KERNEL_SCALE, np.zeros_like(bias)])
    return stds


def silent_fraction(model, images: np.ndarray, layer_name: str = "gap") -> float:
    """The share of ``layer_name``'s channels that are zero for every image of ``images``."""
    import keras

    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    outputs = np.asarray(probe(images, training=False))
    return float(np.mean(np.all(outputs <= 0, axis=0)))
