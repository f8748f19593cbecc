"""The reference 10-layer CNN, its files, and the calibration folded into its last layer."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

from stream_detector.errors import ModelError
from stream_detector.pipeline.crops import CROP_SIZE

# Where the model files are looked for, in order (the first folder holding the .keras or a .tflite
# file wins): $STREAM_DETECTOR_MODEL_DIR; the source checkout's model/ (an editable install, the
# tests); the data folder a non-editable install puts them in (pyproject.toml, data-files).
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[2] / "model"
INSTALLED_MODEL_DIR = Path(sys.prefix) / "share" / "stream-detector" / "model"
MODEL_DIR_ENVIRONMENT = "STREAM_DETECTOR_MODEL_DIR"
KERAS_FILE = "detector.keras"
TFLITE_FP32_FILE = "detector_fp32.tflite"
TFLITE_INT8_FILE = "detector_int8.tflite"


def model_search_path() -> list[Path]:
    configured = os.environ.get(MODEL_DIR_ENVIRONMENT)
    return [Path(configured)] if configured else [CHECKOUT_MODEL_DIR, INSTALLED_MODEL_DIR]


def model_dir() -> Path:
    """The folder of the shipped model files, or a ModelError naming every place it looked."""
    searched = model_search_path()
    for folder in searched:
        if any((folder / name).is_file() for name in (KERAS_FILE, TFLITE_INT8_FILE, TFLITE_FP32_FILE)):
            return folder
    raise ModelError(
        "model files not found; looked in "
        + ", ".join(str(folder) for folder in searched)
        + f" (set {MODEL_DIR_ENVIRONMENT} to the folder holding {KERAS_FILE} / {TFLITE_INT8_FILE})"
    )


def build_model(
    input_size: int | None = CROP_SIZE,
    initializer: str = "he_normal",
    unit_scale: bool = False,
    dropout: float = 0.5,
):
    """The reference architecture with one sigmoid unit meaning p(fake).

    ``input_size=None`` builds the same weights for any square input (global pooling makes the
    convolutions size-agnostic), which training uses for its cheaper low-resolution epochs.
    ``initializer="glorot_uniform"`` is Keras' default and ``unit_scale`` scales pixels to [0, 1],
    both as the reference project had it; ours are He-normal and [-1, 1]. ``dropout`` is the rate of
    the three dense layers' Dropout while training (the reference's 0.5 is what ships: at inference a
    Dropout layer passes its input through, so the rate trained with changes no prediction).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    # Pixels 0..255 in, scaled inside the model so every caller feeds plain uint8-valued crops.
    if unit_scale:
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    else:
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    for index in range(3):
        x = layers.Conv2D(
            64, 5, padding="same", activation="relu", kernel_initializer=initializer, name=f"conv{index + 1}"
        )(x)
        x = layers.MaxPooling2D(2, name=f"pool{index + 1}")(x)
    for index, filters in enumerate((32, 16, 16), start=4):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            dilation_rate=2,
            activation="relu",
            kernel_initializer=initializer,
            name=f"conv{index}",
        )(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for index, units in enumerate((400, 512, 400), start=1):
        x = layers.Dense(units, kernel_initializer=initializer, name=f"dense{index}")(x)
        x = layers.Dropout(dropout, name=f"dropout{index}")(x)
        x = layers.ReLU(name=f"relu_dense{index}")(x)
    # Float32 whatever the global policy: under mixed_bfloat16 training (train.py --precision) a
    # bfloat16 sigmoid resolves p only to ~0.004 near 0.5, coarser than the raw scores' spread.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="p_fake")(x)
    return keras.Model(inputs, outputs, name="stream_detector_cnn")


def load_keras_model(path: str | Path | None = None):
    """Load the shipped (or a given) .keras file; a missing or corrupt file is a one-line ModelError."""
    import keras

    path = Path(path) if path else model_dir() / KERAS_FILE
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # keras raises many types for a damaged archive
        raise ModelError(f"model file corrupt or unreadable: {path} ({type(error).__name__})") from None
    shape = tuple(model.input_shape[1:])
    if shape[-1] != 3 or model.output_shape[-1] != 1:
        raise ModelError(
            f"model file {path} has input {shape} / output {model.output_shape}, expected (224, 224, 3) -> 1"
        )
    return model


def fold_platt_scaling(model, slope: float, intercept: float) -> None:
    """Make the model's sigmoid output the Platt-calibrated probability sigmoid(slope * logit + intercept).

    The last layer is sigmoid(w.x + b); its logit is affine in w and b, so calibration is exact when
    folded into them, and every export of the model carries it.
    """
    layer = model.get_layer("p_fake")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * slope, bias * slope + intercept])


def logit(p_fake: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, with p clipped to [1e-7, 1 - 1e-7] so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(p_fake, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def apply_platt_scaling(p_fake: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """sigmoid(slope * logit(p) + intercept): what the model outputs after fold_platt_scaling, without a
    second pass over the images."""
    return 1.0 / (1.0 + np.exp(-(slope * logit(p_fake) + intercept)))


def fit_platt_scaling(p_fake: np.ndarray, labels: np.ndarray, steps: int = 2000) -> tuple[float, float]:
    """Fit (slope, intercept) minimising log loss of sigmoid(slope * logit(p) + intercept) on a held-out split."""
    y = np.asarray(labels, np.float64)
    log_odds = logit(p_fake)
    slope, intercept = 1.0, 0.0
    # Newton's method on a two-parameter convex problem converges in a handful of steps.
    for _ in range(steps):
        z = slope * log_odds + intercept
        q = 1.0 / (1.0 + np.exp(-z))
        gradient = np.array([np.sum((q - y) * log_odds), np.sum(q - y)])
        weight = q * (1 - q) + 1e-12
        hessian = np.array(
            [
                [np.sum(weight * log_odds * log_odds), np.sum(weight * log_odds)],
                [np.sum(weight * log_odds), np.sum(weight)],
            ]
        )
        hessian += np.eye(2) * 1e-9
        step = np.linalg.solve(hessian, gradient)
        slope, intercept = slope - step[0], intercept - step[1]
        if math.hypot(*step) < 1e-10:
            break
    return float(slope), float(intercept)
