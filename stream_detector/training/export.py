"""Export the Keras model to LiteRT: fp32, and dynamic-range int8 (int8 weights, float activations)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from stream_detector.pipeline.model import TFLITE_FP32_FILE, TFLITE_INT8_FILE


def to_tflite(model, quantize: bool) -> bytes:
    # from_concrete_functions silently drops Keras 3 weights; a SavedModel round trip keeps them.
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as directory:
        model.export(directory, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def export_all(model, directory: str | Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": directory / TFLITE_FP32_FILE, "int8": directory / TFLITE_INT8_FILE}
    for name, path in paths.items():
        path.write_bytes(to_tflite(model, quantize=name == "int8"))
    return paths
