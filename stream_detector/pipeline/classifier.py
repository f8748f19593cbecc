"""Classifiers: face crops -> calibrated p(fake). LiteRT (int8 / fp32) and Keras backends.

Any object with ``name`` and ``classify(crops)`` serves (see ``types.Classifier``), so a remote batched
service can stand in for these later.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from stream_detector.errors import ModelError
from stream_detector.pipeline.crops import CROP_SIZE
from stream_detector.pipeline.model import (
    KERAS_FILE,
    TFLITE_FP32_FILE,
    TFLITE_INT8_FILE,
    load_keras_model,
    logit,
    model_dir,
)

BACKENDS = ("int8", "fp32", "keras")
# int8 is the fastest backend and passes the parity test against Keras (tests/test_export.py), so it
# is the default; "auto" falls back to fp32, then keras, when a file is absent.
DEFAULT_BACKEND = "int8"


def _check_crops(crops: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
        raise ValueError(f"crops must be (N, {size}, {size}, 3), got {crops.shape}")
    return crops


class LiteRTClassifier:
    """A LiteRT interpreter; the batch dimension is resized to each call's batch size."""

    def __init__(self, path: str | Path, name: str, threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file missing: {path}")
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as error:
            raise ModelError(f"model file corrupt or unreadable: {path} ({type(error).__name__})") from None
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch = 1
        # One interpreter is not re-entrant; callers on several threads take turns.
        self._lock = threading.Lock()
        self.name = name
        self.path = path

    def classify(self, crops: np.ndarray) -> np.ndarray:
        crops = _check_crops(crops)
        if len(crops) == 0:
            return np.zeros((0,), np.float32)
        with self._lock:
            if len(crops) != self._batch:
                self._interpreter.resize_tensor_input(self._input, [len(crops), CROP_SIZE, CROP_SIZE, 3])
                self._interpreter.allocate_tensors()
                self._batch = len(crops)
            self._interpreter.set_tensor(self._input, crops.astype(np.float32))
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).reshape(-1).astype(np.float32).copy()


class KerasClassifier:
    """The .keras model through a compiled tf.function (model.predict costs ~40 ms per call in overhead)."""

    def __init__(self, path: str | Path | None = None, model=None) -> None:
        import tensorflow as tf

        self._model = model if model is not None else load_keras_model(path)
        self._function = tf.function(lambda batch: self._model(batch, training=False), reduce_retracing=True)
        self.name = "keras"
        # The shipped model takes 224 px crops; a model trained for another input size (the reference
        # recipe's 128 px, for evaluation) takes crops of its own size.
        self.size = int(self._model.input_shape[1] or CROP_SIZE)

    def classify(self, crops: np.ndarray) -> np.ndarray:
        crops = _check_crops(crops, self.size)
        if len(crops) == 0:
            return np.zeros((0,), np.float32)
        return np.asarray(self._function(crops.astype(np.float32))).reshape(-1).astype(np.float32)


def mirror_averaged(classify, crops: np.ndarray) -> np.ndarray:
    """p(fake) of each crop and its left-right mirror, averaged in logit space.

    Measured on validation faces (model card, Experiments, "Mirror averaging"): about +0.01 ROC-AUC for
    twice the classifier's work. Logits, not probabilities, are averaged so that two confident, agreeing
    views stay confident and the result is still a calibrated-looking score in (0, 1).
    """
    crops = np.asarray(crops)
    if crops.ndim != 4:
        raise ValueError(f"crops must be (N, H, W, 3), got {crops.shape}")
    if len(crops) == 0:
        return np.zeros((0,), np.float32)
    log_odds = logit(np.asarray(classify(np.concatenate([crops, crops[:, :, ::-1]]))).reshape(-1))
    average = (log_odds[: len(crops)] + log_odds[len(crops) :]) / 2
    return (1 / (1 + np.exp(-average))).astype(np.float32)


def classify_in_batches(classifier, crops, batch_size: int = 32) -> np.ndarray:
    """p(fake) of many crops (a sequence of model-size crops), ``batch_size`` per classifier call."""
    outputs = [
        np.asarray(classifier.classify(np.stack(crops[start : start + batch_size])), np.float32).reshape(-1)
        for start in range(0, len(crops), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


class MirrorAveragedClassifier:
    """Another classifier, each crop scored with its mirror image in the same call (``mirror_averaged``).

    The engine's default (EngineSettings.mirror_average): the model card's "Mirror averaging" has what
    it buys and costs. ``name`` says so, so /metrics and reports tell which scoring ran."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = f"{inner.name}+mirror"

    def classify(self, crops: np.ndarray) -> np.ndarray:
        return mirror_averaged(self.inner.classify, crops)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def load_classifier(
    backend: str = "auto", directory: str | Path | None = None, threads: int = 2, mirror_average: bool = False
):
    """The classifier for a backend name: int8, fp32, keras, or auto (the fastest one present);
    ``mirror_average``: wrapped in MirrorAveragedClassifier."""
    classifier = _load_backend(backend, directory, threads)
    return MirrorAveragedClassifier(classifier) if mirror_average else classifier


def _load_backend(backend: str, directory: str | Path | None, threads: int):
    directory = Path(directory) if directory else model_dir()
    files = {"int8": TFLITE_INT8_FILE, "fp32": TFLITE_FP32_FILE, "keras": KERAS_FILE}
    if backend == "auto":
        order = [DEFAULT_BACKEND] + [name for name in BACKENDS if name != DEFAULT_BACKEND]
        present = [name for name in order if (directory / files[name]).is_file()]
        if not present:
            raise ModelError(f"no model file in {directory} (expected {', '.join(files.values())})")
        backend = present[0]
    if backend not in files:
        raise ModelError(f"unknown classifier backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
    path = directory / files[backend]
    if backend == "keras":
        return KerasClassifier(path)
    return LiteRTClassifier(path, name=f"litert-{backend}", threads=threads)
